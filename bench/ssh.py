"""ssh_command_s: one command on a node over the connection nodegate keeps open (the ``ssh://``
backend with the profile's ssh_config, whose ControlMaster multiplexes; and ``paramiko://``),
against one command over a new connection each time. The median of a few runs each.

That the connection is kept is asserted in tests/access/test_nodes.py (the node's sshd sees one
connection); what it saves is a figure, measured here. Measured before on a developer lab: about
0.011 s (ControlMaster) and 0.05 s (paramiko) against 0.3 s for a new connection.

    python -m bench.ssh --lab DIR [--reps 10] [--tiny]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from bench.common import lab_nodes, lab_profile, median


def _per_command(run, reps: int) -> float:
    samples = []
    for _ in range(reps):
        started = time.monotonic()
        run()
        samples.append(time.monotonic() - started)
    return median(samples)


def measure(lab: Path, *, node: str | None = None, reps: int = 10) -> dict:
    from nodegate.cluster.nodes.ssh import Nodes
    from nodegate.profile.load import load_profile

    profile = load_profile(lab_profile(lab), environ={})
    node = node or lab_nodes(lab)[0]
    specs = [profile.node(node)]
    backends = {"ssh-config": profile.ssh, "paramiko": dataclasses.replace(profile.ssh, config=None)}
    reused: dict[str, float] = {}
    new: dict[str, float] = {}
    for name, settings in backends.items():
        nodes = Nodes(settings=settings, nodes=specs)
        try:
            nodes.host(node).run(["true"])      # the connection is made here, once
            reused[name] = round(_per_command(lambda n=nodes: n.host(node).run(["true"]), reps), 4)
        finally:
            nodes.close()

        def fresh(s=settings) -> None:
            one = Nodes(settings=s, nodes=specs)
            try:
                one.host(node).run(["true"])
            finally:
                one.close()                     # ends the ControlMaster too: the next one connects anew
        new[name] = round(_per_command(fresh, max(3, reps // 3)), 4)
    return {"ssh_command_s": reused, "ssh_new_connection_s": new}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.ssh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lab", type=Path, required=True)
    parser.add_argument("--node")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.lab, node=args.node, reps=2 if args.tiny else args.reps)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
