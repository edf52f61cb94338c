"""``nova-xen-split``: the project's operator command.

``nova-xen-split demo [--state-dir DIR] [--transport-url URL] [--mode MODE]
[--glance-url URL --image-id ID]`` boots one instance in each agent mode on
``xapi-sim``, snapshots it into the image service and tears it down.
"""

import argparse
import logging
import signal
import sys
import warnings

from nova_xen_split.cmd import demo


def _parser():
    parser = argparse.ArgumentParser(prog="nova-xen-split")
    sub = parser.add_subparsers(dest="command", required=True)
    run_demo = sub.add_parser(
        "demo", help="Boot one instance in each agent mode on a local XAPI simulator, "
        "show each step and the disks made, then tear everything down.")
    run_demo.add_argument(
        "--state-dir", help="Keep the simulators' state, configs and logs here "
        "(default: a temporary directory, removed at the end).")
    run_demo.add_argument(
        "--transport-url", help="Driver-agent transport, e.g. "
        "rabbit://guest:guest@127.0.0.1:5672/ (default: a local Unix socket).")
    run_demo.add_argument(
        "--mode", action="append", choices=demo.MODES,
        help="Run only this mode (repeatable; default: both).")
    run_demo.add_argument(
        "--glance-url", help="An existing Glance (e.g. http://127.0.0.1:9292) to boot "
        "--image-id from and to snapshot each instance into (default: an embedded "
        "image service with an image the demo makes).")
    run_demo.add_argument(
        "--image-id", help="The active raw or vhd image of --glance-url to boot.")
    run_demo.add_argument("--debug", action="store_true", help="Show the driver's log.")
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if bool(args.glance_url) != bool(args.image_id):
        parser.error("--glance-url and --image-id go together")
    # oslo.service (pulled in by oslo.messaging) imports eventlet, which warns
    # on import; the demo never uses eventlet and its output is for people.
    warnings.filterwarnings("ignore", message=r"(?s)\s*Eventlet is deprecated")
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command != "demo":
        return 2
    # SIGTERM unwinds like Ctrl-C, so the demo's clean-up runs either way:
    # its xapi-sim and agent are stopped and its temporary directory goes.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        return demo.run(state_dir=args.state_dir, transport_url=args.transport_url,
                        modes=tuple(args.mode or demo.MODES), glance_url=args.glance_url,
                        image_id=args.image_id)
    except KeyboardInterrupt:
        sys.stderr.write("nova-xen-split demo: interrupted; everything it started is "
                         "stopped\n")
        return 130


def _interrupt(signum, frame):
    # Once: a second signal must not cut the clean-up short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
