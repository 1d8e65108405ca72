#!/usr/bin/env python3
"""courier-bench's Python peer: the pika consumer a user would write instead of Courier.

Same semantics as Courier's worker on the same broker: manual acks, a prefetch (basic.qos)
like Courier's, one basic.ack per message (pika's usual pattern; no batching), the message id
read from the properties. It does no JSON parsing and no handler work, which favours it.

It drains --expected messages from --queue, then prints one JSON line on stdout:
{"unique": ids seen, "total": deliveries, "foreign": ids not in 0..expected, "seconds": time
from the first message to the last ack (as the benchmark measures every drain), "stalled": true
if it gave up}. It gives up when no new id
arrives for --stall seconds, so a lost message cannot hang the benchmark.

Usage: AMQP_URL=amqp://... pika_worker.py --queue QUEUE --expected N [--prefetch 200] [--stall 60]
(the URL comes from the environment, so its password is not shown in process lists; --url
overrides it)
"""

import argparse
import json
import os
import sys
import time

import pika


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
    ap.add_argument("--queue", required=True)
    ap.add_argument("--expected", type=int, required=True)
    ap.add_argument("--prefetch", type=int, default=200)
    ap.add_argument("--stall", type=float, default=60.0)
    a = ap.parse_args()

    seen = bytearray(a.expected)
    state = {"unique": 0, "total": 0, "foreign": 0, "start": None, "end": None, "stalled": False}
    progress = {"unique": -1, "since": time.monotonic()}

    conn = pika.BlockingConnection(pika.URLParameters(a.url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=a.prefetch)

    def on_message(channel, method, properties, _body):
        if state["start"] is None:
            state["start"] = time.monotonic()
        state["total"] += 1
        try:
            seq = int(properties.message_id)
        except (TypeError, ValueError):
            seq = -1
        if 0 <= seq < a.expected:
            if seen[seq] == 0:
                state["unique"] += 1
            if seen[seq] < 255:
                seen[seq] += 1
        else:
            state["foreign"] += 1
        channel.basic_ack(delivery_tag=method.delivery_tag)
        if state["unique"] == a.expected and state["end"] is None:
            state["end"] = time.monotonic()
            channel.stop_consuming()

    def watchdog():
        # A lost message must not hang the benchmark: give up after --stall without progress.
        if state["end"] is not None:
            return
        now = time.monotonic()
        if state["unique"] != progress["unique"]:
            progress["unique"] = state["unique"]
            progress["since"] = now
        elif now - progress["since"] >= a.stall:
            state["stalled"] = True
            ch.stop_consuming()
            return
        conn.call_later(0.5, watchdog)

    ch.basic_consume(queue=a.queue, on_message_callback=on_message, auto_ack=False)
    conn.call_later(0.5, watchdog)
    if a.expected > 0:
        ch.start_consuming()
    else:
        state["start"] = state["end"] = time.monotonic()
    end = state["end"] if state["end"] is not None else time.monotonic()
    start = state["start"] if state["start"] is not None else end
    conn.close()
    print(
        json.dumps(
            {
                "unique": state["unique"],
                "total": state["total"],
                "foreign": state["foreign"],
                "seconds": end - start,
                "stalled": state["stalled"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
