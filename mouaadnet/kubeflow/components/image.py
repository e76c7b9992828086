"""The image every component runs in on a cluster (built from the repository's Dockerfile).

Push the image to your registry and set MOUAADNET_IMAGE before `mouaadnet pipeline compile` to use your own
tag; `kfp.local` ignores it (tasks run in the current virtual environment).
"""

import os

DEFAULT_IMAGE = "ghcr.io/mouaadnet/mouaadnet-ultra:0.1.0"
IMAGE = os.environ.get("MOUAADNET_IMAGE", DEFAULT_IMAGE)
