"""`python -m examples.portal`: run the demo patient portal against a hub.

With the demo apps (`make run`, examples/apps.yaml) the defaults fit:

    python -m examples.portal --tls-dir var/portal-tls

makes a local CA and a certificate; the hub must trust that CA (HUB_CA_BUNDLE=
var/portal-tls/portal-ca.pem, and HUB_WEBHOOK_ALLOW_NETWORKS=127.0.0.0/8 for a
loopback portal) before it can notify the portal. Give --certfile/--keyfile to use a
certificate of your own instead.

Push notifications: the portal's VAPID key and the browsers' push subscriptions are
kept in --state-dir (made on first start). It pushes only to the push services of the
common browsers (Chrome, Firefox, Safari, Edge) unless --push-service names others.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from examples.portal.app import Portal, PortalConfig
from examples.portal.push import PushConfig
from examples.portal.push_store import KNOWN_PUSH_SERVICES
from examples.portal.server import listening_socket, local_certificate, serve

KEYS = Path(__file__).resolve().parents[1] / "keys"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.portal", description=__doc__)
    parser.add_argument("--fhir-base", default="http://127.0.0.1:8080/demo/fhir")
    parser.add_argument("--client-id", default="portal-demo")
    parser.add_argument("--key", type=Path, help="private key PEM (default: the demo key)")
    parser.add_argument("--kid", help="key id (default: <client-id>-1)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--public-url", help="how the hub reaches it (default: host and port)")
    parser.add_argument("--certfile", type=Path)
    parser.add_argument("--keyfile", type=Path)
    parser.add_argument("--tls-dir", type=Path, default=Path("var/portal-tls"))
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path("var/portal"),
        help="the VAPID key and the push subscriptions (default: var/portal)",
    )
    parser.add_argument(
        "--vapid-subject",
        default="mailto:portal-demo@example.com",
        help="how push services reach the operator: a mailto: address or an https: URL",
    )
    parser.add_argument(
        "--push-service",
        action="append",
        default=[],
        metavar="HOST",
        help="also push to this host (and its subdomains); repeatable",
    )
    parser.add_argument(
        "--push-ca-bundle", type=Path, help="trust this CA (only) for push services"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if (args.certfile is None) != (args.keyfile is None):
        parser.error("give both --certfile and --keyfile, or neither")
    if args.certfile is None:
        certificate = local_certificate(args.tls_dir, args.host, "localhost")
        print(f"hub: trust {certificate.ca_bundle} (HUB_CA_BUNDLE) to notify this portal")
        certfile, keyfile = certificate.certfile, certificate.keyfile
    else:
        certfile, keyfile = args.certfile, args.keyfile
    config = PortalConfig(
        fhir_base=args.fhir_base,
        client_id=args.client_id,
        private_key=(args.key or KEYS / f"{args.client_id}.pem").read_bytes(),
        kid=args.kid or f"{args.client_id}-1",
        public_url=args.public_url or f"https://{args.host}:{args.port}",
        certfile=certfile,
        keyfile=keyfile,
        push=PushConfig(
            state_dir=args.state_dir,
            subject=args.vapid_subject,
            push_hosts=(*KNOWN_PUSH_SERVICES, *args.push_service),
            ca_bundle=args.push_ca_bundle,
        ),
    )
    sock = listening_socket(args.host, args.port)
    print(f"portal: {config.public_url}/ (notifications at {config.endpoint})")
    try:
        portal = Portal(config)
    except ValueError as exc:  # e.g. a VAPID subject push services would refuse
        parser.error(str(exc))
    serve(portal, sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
