# The harness lives in the nodegate package (registered as a pytest plugin by its entry point);
# this file only marks the project root for pytest.

# pytester: the plugin and reporting tests run small pytest projects in a subprocess
pytest_plugins = ["pytester"]
