#!/usr/bin/env python3
"""Publish ONE Courier notification from Python, following the message contract.

    python3 publish.py [CHANNEL] [MESSAGE_ID]

CHANNEL     routing key = notification channel (email, sms, push, webhook); default "email"
MESSAGE_ID  idempotency key; default: a fresh UUID

Environment:
  AMQP_URL          broker URL (default amqp://guest:guest@127.0.0.1:5672/%2f)
  COURIER_EXCHANGE  exchange to publish to (default "notifications")
  COURIER_PRIORITY  message priority 0-9 (default 5)
  COURIER_BODY      JSON body to send instead of the built-in example

Exit codes: 0 confirmed by the broker, 1 not published (unroutable, nacked,
exchange missing, connection failure), 2 bad arguments or environment.
"""
import json
import os
import sys
import uuid
from urllib.parse import urlsplit, urlunsplit

import pika
import pika.exceptions


def redacted(url):
    """The URL with its password replaced by ***, safe to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def fail(msg, code=1):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


def main():
    url = os.environ.get("AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/%2f"
    exchange = os.environ.get("COURIER_EXCHANGE") or "notifications"
    routing_key = sys.argv[1] if len(sys.argv) > 1 else "email"
    message_id = sys.argv[2] if len(sys.argv) > 2 else str(uuid.uuid4())

    try:
        priority = int(os.environ.get("COURIER_PRIORITY") or "5")
    except ValueError:
        fail("COURIER_PRIORITY must be an integer 0-9", 2)
    if not 0 <= priority <= 9:
        fail("COURIER_PRIORITY must be an integer 0-9", 2)

    if os.environ.get("COURIER_BODY"):
        try:  # validate, then send exactly what the user gave
            json.loads(os.environ["COURIER_BODY"])
        except ValueError as e:
            fail(f"COURIER_BODY is not valid JSON: {e}", 2)
        body = os.environ["COURIER_BODY"].encode("utf-8")
    else:
        body = json.dumps(
            {"to": "ada@example.com", "subject": "Welcome", "text": "Hello from Python"}
        ).encode("utf-8")

    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPError as e:
        # pika's errors do not contain the password, but we only show the redacted URL anyway.
        detail = f"{type(e).__name__} {e}".strip()
        fail(f"cannot connect to {redacted(url)}: {detail} (is RabbitMQ running? right credentials?)")

    try:
        channel = connection.channel()
        # Publisher confirms: basic_publish now blocks until the broker acks or nacks.
        channel.confirm_delivery()
        channel.basic_publish(
            exchange=exchange,
            routing_key=routing_key,
            body=body,
            properties=pika.BasicProperties(
                content_type="application/json",
                delivery_mode=2,  # persistent: survives a broker restart (durable queue)
                message_id=message_id,
                priority=priority,
                # correlation_id=..., reply_to=...  # only if you want the outcome sent back
            ),
            # mandatory: the broker returns the message (basic.return) instead of
            # silently dropping it when no queue is bound for this routing key.
            mandatory=True,
        )
    except pika.exceptions.UnroutableError:
        fail(
            f"unroutable: no queue is bound to exchange '{exchange}' with routing key "
            f"'{routing_key}' (unknown channel? topology not applied?); message {message_id} "
            "was NOT published"
        )
    except pika.exceptions.NackError:
        fail(f"broker nacked message {message_id}: it was NOT published")
    except pika.exceptions.ChannelClosedByBroker as e:
        # e.g. 404 NOT_FOUND when the exchange does not exist
        fail(f"broker closed the channel ({e.reply_code} {e.reply_text}); "
             f"message {message_id} was NOT published")
    except pika.exceptions.AMQPError as e:
        fail(f"publish failed: {type(e).__name__} {e}; message {message_id} may not be published")
    finally:
        if connection.is_open:
            connection.close()

    print(f"published {message_id} to {exchange}/{routing_key}")


if __name__ == "__main__":
    main()
