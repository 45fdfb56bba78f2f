"""An S3-compatible server for the tests: moto's server on a free local port,
speaking the S3 REST protocol over HTTP, with IAM authentication on (every
request after the set-up below must carry a valid SigV4 signature of a key
that IAM knows, so wrong credentials are refused as S3 refuses them).

Prints one JSON line: {"endpoint", "access_key", "secret_key", "region"}.
Then reads commands on stdin, one a line, answering one line each:
  bucket NAME   create a bucket            -> "ok" or "error: ..."
It stops when stdin closes (its parent test process ended).
"""

import json
import os
import sys

# Requests allowed before authentication is enforced: exactly the IAM
# set-up below (create user, access key, policy, attachment).
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "4"
REGION = "us-east-1"

from moto.server import ThreadedMotoServer  # noqa: E402  (reads the variable above)
import boto3  # noqa: E402


def main() -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    endpoint = f"http://127.0.0.1:{port}"
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
        region_name=REGION,
    )
    iam.create_user(UserName="vitrine")
    key = iam.create_access_key(UserName="vitrine")["AccessKey"]
    policy = iam.create_policy(
        PolicyName="vitrine-s3",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }
        ),
    )
    iam.attach_user_policy(UserName="vitrine", PolicyArn=policy["Policy"]["Arn"])
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        region_name=REGION,
    )
    print(
        json.dumps(
            {
                "endpoint": endpoint,
                "access_key": key["AccessKeyId"],
                "secret_key": key["SecretAccessKey"],
                "region": REGION,
            }
        ),
        flush=True,
    )
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        try:
            if command == "bucket":
                s3.create_bucket(Bucket=arg)
                print("ok", flush=True)
            else:
                print(f"error: unknown command {command!r}", flush=True)
        except Exception as e:  # reported to the test, which fails with it
            print(f"error: {e}", flush=True)
    server.stop()


if __name__ == "__main__":
    main()
