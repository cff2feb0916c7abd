"""`python -m nodegate.lab.apiserver --dir DIR`: serve the lab's Kubernetes API.

Started by the supervisor (its output goes to DIR/logs/apiserver.log). Listens on
LabConfig.api_address:api_port (the address a load balancer in front of the API servers has) and on
every control-plane node's address at the same port, as each control-plane node's kube-apiserver
does (Kubespray binds it to 0.0.0.0:6443, kube_apiserver_bind_address and kube_apiserver_port;
its admin.conf names the first control-plane node's address: lab/admin_conf.py). Either way: HTTPS with the lab's CA, client certificates and tokens
(DIR/pki, written by `lab up`), or plain HTTP with the lab's bearer token (`--plain-http`);
SIGTERM stops it.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from nodegate.lab.apiserver.app import Api
from nodegate.lab.apiserver.cluster import Cluster
from nodegate.lab.apiserver.faults import Faults
from nodegate.lab.apiserver.store import Store
from nodegate.lab.config import LabConfig
from nodegate.lab.pki import Pki, read_tokens

log = logging.getLogger("nodegate.lab.apiserver")


def server_tls_context(config: LabConfig):
    """TLS as kube-apiserver serves it: its certificate for its address, and client certificates
    verified against the cluster CA when offered (optional: token users offer none)."""
    import ssl

    pki = Pki.of(config.dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.load_verify_locations(cafile=str(pki.ca_cert))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


async def serve(config: LabConfig) -> None:
    store = Store()
    faults = Faults(config.dir / "faults.json")
    faults.refresh()
    cluster = Cluster(config, store, faults)
    if not cluster.restore():
        cluster.seed()
    api = Api(cluster, faults, config.token, tls=config.api_tls, tokens=read_tokens(config.dir))
    runner = web.AppRunner(api.make_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    tls = server_tls_context(config) if config.api_tls else None
    for address in dict.fromkeys((config.api_address, *(n.address for n in config.nodes if n.control_plane))):
        site = web.TCPSite(runner, address, config.api_port, reuse_address=True, ssl_context=tls)
        await site.start()
    log.info("serving the Kubernetes API on %s (%d nodes)", config.api_url, len(config.nodes))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop_task = asyncio.create_task(cluster.run())
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        loop_task.cancel()
        await runner.cleanup()
        cluster.save()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodegate.lab.apiserver", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="the lab directory (holds lab.json)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    lab_dir = Path(args.dir)
    if not (lab_dir / "lab.json").exists():
        print(f"error: no lab in {lab_dir} (lab.json missing)\n  fix: start the lab with `nodegate lab up --dir {lab_dir}`",
              file=sys.stderr)
        return 2
    config = LabConfig.load(lab_dir)
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"error: cannot serve on {config.api_address}:{config.api_port}: {exc}\n"
              f"  fix: is another lab's API server using net {config.net}? see `nodegate lab status`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
