"""Calls two operations through a client that openapi-python-client
generated from /openapi.json: one that answers, one that fails.

Usage: generated_client.py PACKAGE_PARENT BASE_URL TOKEN
Prints one JSON object with what each call returned.
"""

import json
import sys

sys.path.insert(0, sys.argv[1])

from opbox_client import AuthenticatedClient  # noqa: E402
from opbox_client.api.echo import echo_fail  # noqa: E402
from opbox_client.api.textkit import textkit_stats  # noqa: E402
from opbox_client.models import ErrorBody, Stats, TextkitStatsInput  # noqa: E402

client = AuthenticatedClient(base_url=sys.argv[2], token=sys.argv[3])

stats = textkit_stats.sync_detailed(
    client=client, body=TextkitStatsInput(text="to be or not to be")
)
assert isinstance(stats.parsed, Stats), stats
failed = echo_fail.sync_detailed(client=client)
assert isinstance(failed.parsed, ErrorBody), failed

print(
    json.dumps(
        {
            "stats": {
                "status": int(stats.status_code),
                "words": stats.parsed.words,
                "top": [w.word for w in stats.parsed.top_words],
                "request_id": stats.headers.get("opbox-request-id"),
            },
            "fail": {
                "status": int(failed.status_code),
                "code": failed.parsed.error.code,
                "message": failed.parsed.error.message,
                "request_id": failed.parsed.request_id,
            },
        }
    )
)
