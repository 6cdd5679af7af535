#!/usr/bin/env python3
"""Direct S3 requests for the demo and the tests (boto3, not through the mount).

Usage: s3tool.py ENDPOINT BUCKET COMMAND [ARGS]
  mb                     create the bucket (ignores "already exists")
  put KEY FILE|-         upload a file (or stdin)
  get KEY                print an object's bytes to stdout
  ls [PREFIX]            list keys with sizes
  rm KEY                 delete an object
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Only loopback endpoints.
"""
import sys
from urllib.parse import urlparse

import boto3
from botocore.config import Config


def main() -> int:
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 64
    endpoint, bucket, cmd, *args = sys.argv[1:]
    host = urlparse(endpoint).hostname
    if host not in ("127.0.0.1", "::1", "localhost"):
        print(f"s3tool: refusing non-loopback endpoint {endpoint}", file=sys.stderr)
        return 64
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))
    if cmd == "mb":
        try:
            s3.create_bucket(Bucket=bucket)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        except s3.exceptions.BucketAlreadyExists:
            pass
    elif cmd == "put":
        key, src = args
        body = sys.stdin.buffer.read() if src == "-" else open(src, "rb").read()
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    elif cmd == "get":
        (key,) = args
        sys.stdout.buffer.write(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    elif cmd == "ls":
        prefix = args[0] if args else ""
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                print(f"{o['Size']:>10}  {o['Key']}")
    elif cmd == "rm":
        (key,) = args
        s3.delete_object(Bucket=bucket, Key=key)
    else:
        print(f"s3tool: unknown command {cmd}", file=sys.stderr)
        return 64
    return 0


if __name__ == "__main__":
    sys.exit(main())
