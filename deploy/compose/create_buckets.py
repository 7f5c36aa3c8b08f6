"""Create the object store's buckets for staging and the Delta lake, if they are missing (the Compose stack's
``object-store-init``). The endpoint and keys come from the environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``), as for delta-rs.

    python create_buckets.py cdc-staging cdc-lake
"""

from __future__ import annotations

import sys

import boto3


def create_buckets(names: list[str]) -> list[str]:
    """Create each bucket of ``names`` that does not exist yet; returns those it created."""
    client = boto3.client("s3")
    existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    created = []
    for name in names:
        if name not in existing:
            client.create_bucket(Bucket=name)
            created.append(name)
    return created


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: create_buckets.py BUCKET [BUCKET...]", file=sys.stderr)
        return 2
    created = create_buckets(argv)
    for name in argv:
        print(f"bucket {name}: {'created' if name in created else 'already there'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
