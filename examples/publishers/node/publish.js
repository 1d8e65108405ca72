#!/usr/bin/env node
// Publish ONE Courier notification from Node.js, following the message contract.
//
//   node publish.js [CHANNEL] [MESSAGE_ID]        (or: npm start -- [CHANNEL] [MESSAGE_ID])
//
// CHANNEL     routing key = notification channel (email, sms, push, webhook); default "email"
// MESSAGE_ID  idempotency key; default: a fresh UUID
//
// Environment:
//   AMQP_URL          broker URL (default amqp://guest:guest@127.0.0.1:5672/%2f)
//   COURIER_EXCHANGE  exchange to publish to (default "notifications")
//   COURIER_PRIORITY  message priority 0-9 (default 5)
//   COURIER_BODY      JSON body to send instead of the built-in example
//
// Exit codes: 0 confirmed by the broker, 1 not published (unroutable, nacked,
// exchange missing, connection failure), 2 bad arguments or environment.
'use strict';

const amqp = require('amqplib');
const { randomUUID } = require('node:crypto');

const CONFIRM_TIMEOUT_MS = 10_000;

// The URL with its password replaced by ***, safe to print.
function redacted(url) {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '<unparseable AMQP_URL>';
  }
}

function fail(msg, code = 1) {
  console.error(`error: ${msg}`);
  process.exit(code);
}

async function main() {
  const url = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f';
  const exchange = process.env.COURIER_EXCHANGE || 'notifications';
  const routingKey = process.argv[2] || 'email';
  const messageId = process.argv[3] || randomUUID();

  const priorityText = process.env.COURIER_PRIORITY || '5';
  const priority = Number(priorityText);
  if (!/^\d+$/.test(priorityText) || priority > 9) fail('COURIER_PRIORITY must be an integer 0-9', 2);

  let body;
  if (process.env.COURIER_BODY) {
    try {
      JSON.parse(process.env.COURIER_BODY); // validate, then send exactly what the user gave
    } catch (e) {
      fail(`COURIER_BODY is not valid JSON: ${e.message}`, 2);
    }
    body = Buffer.from(process.env.COURIER_BODY, 'utf8');
  } else {
    body = Buffer.from(
      JSON.stringify({ to: 'ada@example.com', subject: 'Welcome', text: 'Hello from Node.js' }),
    );
  }

  let conn;
  try {
    conn = await amqp.connect(url);
  } catch (e) {
    fail(`cannot connect to ${redacted(url)}: ${e.message} (is RabbitMQ running? right credentials?)`);
  }
  conn.on('error', () => {}); // failures surface below through the channel / confirm

  try {
    // A confirm channel: the broker acks (or nacks) every publish.
    const ch = await conn.createConfirmChannel();

    // Channel-level errors, e.g. 404 NOT_FOUND when the exchange does not exist.
    // Without a listener an 'error' event would crash the process.
    let channelError = null;
    ch.on('error', (e) => {
      channelError = e;
    });

    // With mandatory=true the broker sends the message back (basic.return) instead of
    // dropping it when no queue is bound for the routing key. The return always arrives
    // before the confirm, so it is known by the time waitForConfirms() resolves.
    let returned = null;
    ch.on('return', (msg) => {
      returned = msg.fields; // { replyCode, replyText, exchange, routingKey }
    });

    ch.publish(
      exchange,
      routingKey,
      body,
      {
        mandatory: true,
        persistent: true, // delivery_mode = 2: survives a broker restart (durable queue)
        contentType: 'application/json',
        messageId,
        priority,
        // correlationId: ..., replyTo: ...   // only if you want the outcome sent back
      },
      () => {}, // per-message confirm callback; waitForConfirms() below reports the outcome
    );

    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(Object.assign(new Error(`no confirm from the broker within ${CONFIRM_TIMEOUT_MS} ms`), { timeout: true })),
        CONFIRM_TIMEOUT_MS,
      );
    });
    try {
      // Rejects if the broker nacked the message or the channel closed before the confirm.
      await Promise.race([ch.waitForConfirms(), timeout]);
    } catch (e) {
      if (channelError) {
        fail(`broker closed the channel (${channelError.message}); message ${messageId} was NOT published`);
      }
      if (e.timeout) fail(`${e.message} for message ${messageId}; it may or may not be published`);
      fail(`broker nacked message ${messageId} (${e.message}): it was NOT published`);
    } finally {
      clearTimeout(timer);
    }

    if (returned) {
      fail(
        `unroutable: no queue is bound to exchange '${exchange}' with routing key '${routingKey}' ` +
          `(${returned.replyCode} ${returned.replyText}; unknown channel? topology not applied?); ` +
          `message ${messageId} was NOT published`,
      );
    }

    await ch.close();
    console.log(`published ${messageId} to ${exchange}/${routingKey}`);
  } finally {
    await conn.close().catch(() => {});
  }
}

main().catch((e) => fail(e.message));
