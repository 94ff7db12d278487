"""Docker HEALTHCHECK for resnet-serve: exit 0 when GET /health/live answers 200, else 1.

The slim image has no curl, so the check is a few lines of standard library Python; it reads the
port the server reads (RESNET_SERVE_PORT, default 8000) and prints one line on failure, which
`docker inspect` keeps in the health log.

    python deploy/docker/healthcheck.py
"""

import os
import sys
import urllib.error
import urllib.request

PATH = "/health/live"  # the process answers; readiness (/health/ready) is the load balancer's business
TIMEOUT_S = 2.0  # below the HEALTHCHECK --timeout of 3 s, so this script reports the failure itself


def main() -> int:
    """Probe the local server once; the exit status is Docker's health verdict."""
    port = os.environ.get("RESNET_SERVE_PORT", "8000")
    url = f"http://127.0.0.1:{port}{PATH}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (OSError, ValueError) as error:  # refused, timed out, or a malformed port
        print(f"unhealthy: {url}: {error}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}, expected 200", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
