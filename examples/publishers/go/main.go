// Publish ONE Courier notification from Go, following the message contract.
//
//	go run . [CHANNEL] [MESSAGE_ID]
//
// CHANNEL     routing key = notification channel (email, sms, push, webhook); default "email"
// MESSAGE_ID  idempotency key; default: a fresh UUID
//
// Environment:
//
//	AMQP_URL          broker URL (default amqp://guest:guest@127.0.0.1:5672/%2f)
//	COURIER_EXCHANGE  exchange to publish to (default "notifications")
//	COURIER_PRIORITY  message priority 0-9 (default 5)
//	COURIER_BODY      JSON body to send instead of the built-in example
//
// Exit codes: 0 confirmed by the broker, 1 not published (unroutable, nacked,
// exchange missing, connection failure), 2 bad arguments or environment.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

const confirmTimeout = 10 * time.Second

func fail(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "error: "+format+"\n", args...)
	os.Exit(code)
}

// redacted returns the URL with its password masked, safe to print.
func redacted(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparseable AMQP_URL>"
	}
	return u.Redacted()
}

// newUUID returns a random (version 4) UUID without pulling in another module.
func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func getenv(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func main() {
	amqpURL := getenv("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
	exchange := getenv("COURIER_EXCHANGE", "notifications")
	routingKey := "email"
	if len(os.Args) > 1 {
		routingKey = os.Args[1]
	}
	messageID := newUUID()
	if len(os.Args) > 2 {
		messageID = os.Args[2]
	}

	priority, err := strconv.Atoi(getenv("COURIER_PRIORITY", "5"))
	if err != nil || priority < 0 || priority > 9 {
		fail(2, "COURIER_PRIORITY must be an integer 0-9")
	}

	body := []byte(`{"to": "ada@example.com", "subject": "Welcome", "text": "Hello from Go"}`)
	if custom := os.Getenv("COURIER_BODY"); custom != "" {
		if !json.Valid([]byte(custom)) {
			fail(2, "COURIER_BODY is not valid JSON")
		}
		body = []byte(custom) // send exactly what the user gave
	}

	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		fail(1, "cannot connect to %s: %v (is RabbitMQ running? right credentials?)", redacted(amqpURL), err)
	}
	defer conn.Close()

	ch, err := conn.Channel()
	if err != nil {
		fail(1, "cannot open a channel: %v", err)
	}

	// Register the listeners BEFORE publishing. Both are buffered: the library
	// delivers to them from its reader goroutine and must never block.
	//  - returns: with mandatory=true the broker sends the message back (basic.return)
	//    when no queue is bound for the routing key; it always arrives before the confirm.
	//  - closes: the broker closes the channel on e.g. 404 NOT_FOUND (exchange missing).
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))

	// Publisher confirms: the broker acks (or nacks) every publish on this channel.
	if err := ch.Confirm(false); err != nil {
		fail(1, "cannot enable publisher confirms: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), confirmTimeout)
	defer cancel()
	confirm, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, routingKey,
		true,  // mandatory: return the message if it cannot be routed to a queue
		false, // immediate: not supported by RabbitMQ, always false
		amqp.Publishing{
			ContentType:  "application/json",
			DeliveryMode: amqp.Persistent, // = 2: survives a broker restart (durable queue)
			MessageId:    messageID,
			Priority:     uint8(priority),
			Body:         body,
			// CorrelationId: ..., ReplyTo: ...  // only if you want the outcome sent back
		})
	if err != nil {
		fail(1, "publish failed: %v; message %s was NOT published", err, messageID)
	}

	// Wait for the broker's confirm. Wait() exists in every amqp091-go version
	// (newer ones also offer WaitContext); a channel close counts as a nack.
	acked := make(chan bool, 1)
	go func() { acked <- confirm.Wait() }()
	select {
	case ok := <-acked:
		if !ok {
			select {
			case e, open := <-closes:
				if open && e != nil {
					fail(1, "broker closed the channel (%d %s); message %s was NOT published",
						e.Code, e.Reason, messageID)
				}
			default:
			}
			fail(1, "broker nacked message %s: it was NOT published", messageID)
		}
	case <-time.After(confirmTimeout):
		fail(1, "no confirm from the broker within %s for message %s", confirmTimeout, messageID)
	}

	// Acked, but acked-after-return means "accepted and dropped": check for a return.
	select {
	case r, open := <-returns:
		if open {
			fail(1, "unroutable: no queue is bound to exchange '%s' with routing key '%s' "+
				"(%d %s; unknown channel? topology not applied?); message %s was NOT published",
				exchange, routingKey, r.ReplyCode, r.ReplyText, messageID)
		}
	default:
	}

	fmt.Printf("published %s to %s/%s\n", messageID, exchange, routingKey)
}
