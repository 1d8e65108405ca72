// Publish ONE Courier notification from Java, following the message contract.
//
//   mvn -q compile exec:java -Dexec.args="[CHANNEL] [MESSAGE_ID]"
//   (or, with the jars at hand: java -cp amqp-client.jar:slf4j-api.jar Publish.java [CHANNEL] [MESSAGE_ID])
//
// CHANNEL     routing key = notification channel (email, sms, push, webhook); default "email"
// MESSAGE_ID  idempotency key; default: a fresh UUID
//
// Environment:
//   AMQP_URL          broker URL (default amqp://guest:guest@127.0.0.1:5672/%2f)
//   COURIER_EXCHANGE  exchange to publish to (default "notifications")
//   COURIER_PRIORITY  message priority 0-9 (default 5)
//   COURIER_BODY      JSON body to send instead of the built-in example (sent as is: Java has no
//                     JSON parser built in, so only a cheap {...} / [...] shape check is made here)
//
// Exit codes: 0 confirmed by the broker, 1 not published (unroutable, nacked,
// exchange missing, connection failure), 2 bad arguments or environment.

import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.client.ShutdownSignalException;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.util.UUID;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicReference;

public class Publish {
    private static final long CONFIRM_TIMEOUT_MS = 10_000;

    private static void fail(int code, String msg) {
        System.err.println("error: " + msg);
        System.exit(code);
    }

    // The URL with its password replaced by ***, safe to print.
    private static String redacted(String url) {
        try {
            URI u = new URI(url);
            String info = u.getRawUserInfo();
            if (info == null || !info.contains(":")) return url;
            String user = info.substring(0, info.indexOf(':'));
            return url.replace(info + "@", user + ":***@");
        } catch (Exception e) {
            return "<unparseable AMQP_URL>";
        }
    }

    private static String env(String key, String def) {
        String v = System.getenv(key);
        return (v == null || v.isEmpty()) ? def : v;
    }

    public static void main(String[] args) throws Exception {
        String url = env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
        String exchange = env("COURIER_EXCHANGE", "notifications");
        String routingKey = args.length > 0 ? args[0] : "email";
        String messageId = args.length > 1 ? args[1] : UUID.randomUUID().toString();

        int priority = -1;
        try {
            priority = Integer.parseInt(env("COURIER_PRIORITY", "5"));
        } catch (NumberFormatException e) {
            // reported below
        }
        if (priority < 0 || priority > 9) fail(2, "COURIER_PRIORITY must be an integer 0-9");

        String body = "{\"to\": \"ada@example.com\", \"subject\": \"Welcome\", \"text\": \"Hello from Java\"}";
        String custom = System.getenv("COURIER_BODY");
        if (custom != null && !custom.isEmpty()) {
            String t = custom.strip();
            if (!(t.startsWith("{") && t.endsWith("}")) && !(t.startsWith("[") && t.endsWith("]"))) {
                fail(2, "COURIER_BODY is not valid JSON (expected an object or array)");
            }
            body = custom; // sent exactly as given
        }

        ConnectionFactory factory = new ConnectionFactory();
        Connection conn = null;
        try {
            factory.setUri(url); // amqp://user:pass@host:port/vhost (vhost "%2f" = "/")
            conn = factory.newConnection("courier-publisher-example");
        } catch (Exception e) {
            // Exception texts from the client do not contain the password; the URL is redacted.
            fail(1, "cannot connect to " + redacted(url) + ": " + e + " (is RabbitMQ running? right credentials?)");
        }

        try {
            Channel ch = conn.createChannel();

            // With mandatory=true the broker sends the message back (basic.return) instead of
            // dropping it when no queue is bound for the routing key. The return always arrives
            // before the confirm, so it is known once waitForConfirmsOrDie() returns.
            AtomicReference<String> returned = new AtomicReference<>();
            ch.addReturnListener((replyCode, replyText, ex, rk, props, bytes) ->
                    returned.set(replyCode + " " + replyText));

            // Publisher confirms: the broker acks (or nacks) every publish on this channel.
            ch.confirmSelect();

            AMQP.BasicProperties props = new AMQP.BasicProperties.Builder()
                    .contentType("application/json")
                    .deliveryMode(2) // persistent: survives a broker restart (durable queue)
                    .messageId(messageId)
                    .priority(priority)
                    // .correlationId(...).replyTo(...)  // only if you want the outcome sent back
                    .build();
            ch.basicPublish(exchange, routingKey, true /* mandatory */, props,
                    body.getBytes(StandardCharsets.UTF_8));

            try {
                // Throws IOException on a nack, TimeoutException if no confirm arrives in time,
                // ShutdownSignalException if the broker closes the channel (e.g. 404 NOT_FOUND).
                ch.waitForConfirmsOrDie(CONFIRM_TIMEOUT_MS);
            } catch (ShutdownSignalException e) {
                String reason = e.getReason() instanceof AMQP.Channel.Close
                        ? ((AMQP.Channel.Close) e.getReason()).getReplyCode() + " "
                                + ((AMQP.Channel.Close) e.getReason()).getReplyText()
                        : e.getMessage();
                fail(1, "broker closed the channel (" + reason + "); message " + messageId + " was NOT published");
            } catch (TimeoutException e) {
                fail(1, "no confirm from the broker within " + CONFIRM_TIMEOUT_MS + " ms for message " + messageId);
            } catch (java.io.IOException e) {
                fail(1, "broker nacked message " + messageId + ": it was NOT published");
            }

            if (returned.get() != null) {
                fail(1, "unroutable: no queue is bound to exchange '" + exchange + "' with routing key '"
                        + routingKey + "' (" + returned.get() + "; unknown channel? topology not applied?); message "
                        + messageId + " was NOT published");
            }
            System.out.println("published " + messageId + " to " + exchange + "/" + routingKey);
        } finally {
            try {
                conn.close();
            } catch (Exception ignored) {
                // already closed
            }
        }
    }
}
