#!/usr/bin/env node
'use strict';
// A Bayeux test peer: faye (long-polling and WebSocket) mounted where GWS serves
// CometD, plus control endpoints that the tests drive.
//
//   node faye-server.js [--port N] [--timeout-ms N]
//
// faye counts its timeout in seconds: --timeout-ms 25000 becomes timeout 25.
//
// Prints exactly one line, {"listening": "http://127.0.0.1:PORT"}, when ready.
//
//   POST /control/publish  {"channel": C, "count": N, "start": S}
//                          publishes N GWS-shaped EmailStateChangeMessage payloads
//                          with referenceId S..S+N-1, in order;
//                          or {"channel": C, "data": [...]} publishes the given payloads.
//                          Answers {"published": N} once all are handed to the server.
//   POST /control/forget   destroys every client in faye's engine (destroyClient), so
//                          the next /meta/connect of a client is answered
//                          "401:<clientId>:Unknown client" with advice
//                          {reconnect: "handshake"}
//                          (a WebSocket of a forgotten client is closed by faye).
//   POST /control/refuse-subscribe  {"count": N}: refuse the next N /meta/subscribe
//                          requests with 403::subscribe_denied (fault injection).
//   GET  /control/stats    {"sessions": n, "held": n, "handshakes": n, "published": n}
//
// Exits on SIGTERM/SIGINT, or when stdin is a pipe and closes (the test went away).

const fs = require('fs');
const http = require('http');
const faye = require('faye');

const MOUNT = '/api/v2/notifications';
const CHUNK = 5000; // publishes per event-loop turn, so the server keeps answering

function parseArgs(argv) {
    const args = { port: 0, timeoutMs: 25000 };
    for (let i = 0; i < argv.length; ++i) {
        const next = () => {
            const value = Number(argv[++i]);
            if (!Number.isInteger(value) || value < 0) {
                throw new Error(`${argv[i - 1]} needs a non-negative integer, got ${argv[i]}`);
            }
            return value;
        };
        switch (argv[i]) {
            case '--port': args.port = next(); break;
            case '--timeout-ms': args.timeoutMs = next(); break;
            default: throw new Error(`unknown argument ${argv[i]}`);
        }
    }
    return args;
}

// A GWS EmailStateChangeMessage: its data serialises to about 450 bytes, about 480
// with the {"channel": ..., "data": ...} envelope (a 100-character body).
const BODY = '<p>Thank you for contacting us. Your request has been handled; ' +
    'our reply was sent.</p>';

function gwsMessage(n) {
    const id = 'SEQ' + String(n).padStart(10, '0');
    return {
        messageType: 'EmailStateChangeMessage',
        notificationType: 'StatusChange',
        referenceId: n,
        email: {
            id: id,
            state: 'Sent',
            from: 'agent1@example.com',
            to: ['customer@example.org'],
            subject: 'Re: ' + id,
            body: BODY,
            uri: '/api/v2/me/emails/' + id,
            mime: 'text/html',
            capabilities: [],
            userData: { case: id.slice(3) },
        },
    };
}

function readJson(request) {
    return new Promise((resolve, reject) => {
        const chunks = [];
        request.on('data', chunk => chunks.push(chunk));
        request.on('error', reject);
        request.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            try {
                resolve(text ? JSON.parse(text) : {});
            } catch (e) {
                reject(new Error('body is not JSON: ' + e.message));
            }
        });
    });
}

function answer(response, status, body) {
    const text = JSON.stringify(body);
    response.writeHead(status, {
        'Content-Type': 'application/json',
        'Content-Length': Buffer.byteLength(text),
    });
    response.end(text);
}

// Returns a function that yields the i-th payload, or throws on a bad request.
function payloadsOf(body) {
    if (!body || typeof body.channel !== 'string' || !body.channel.startsWith('/') ||
        body.channel.startsWith('/meta/') || body.channel.startsWith('/service/')) {
        throw new Error('"channel" must be a broadcast channel name');
    }
    if (Array.isArray(body.data)) {
        const items = body.data;
        return { count: items.length, payload: i => items[i] };
    }
    const count = body.count;
    const start = body.start === undefined ? 0 : body.start;
    if (!Number.isInteger(count) || count < 0 || !Number.isInteger(start) || start < 0) {
        throw new Error('"count" and "start" must be non-negative integers (or give "data")');
    }
    return { count: count, payload: i => gwsMessage(start + i) };
}

function main() {
    const args = parseArgs(process.argv.slice(2));
    // WebSocket needs nothing here: attach() below also takes over 'upgrade'.
    const adapter = new faye.NodeAdapter({ mount: MOUNT, timeout: args.timeoutMs / 1000 });
    // The engine (faye's Engine.Proxy over its in-memory engine). Publishing
    // through it is synchronous and keeps order, unlike adapter.getClient(),
    // whose first publish can overtake its own handshake (see cometd.md); and
    // forgetting clients needs destroyClient(), which only the engine has.
    const engine = adapter._server._engine;

    const clients = new Set();
    let handshakes = 0;
    let published = 0;
    let refuseSubscribes = 0;
    // An incoming extension that sets message.error makes Server#subscribe
    // answer unsuccessfully with that error, subscribing nothing.
    adapter.addExtension({
        incoming: (message, callback) => {
            if (message.channel === '/meta/subscribe' && refuseSubscribes > 0) {
                --refuseSubscribes;
                message.error = '403::subscribe_denied';
            }
            callback(message);
        },
    });
    adapter.on('handshake', clientId => {
        clients.add(clientId);
        ++handshakes;
    });
    adapter.on('disconnect', clientId => {
        clients.delete(clientId);
    });

    // Publishes in order, a chunk per event-loop turn, so that faye flushes held
    // connects (and WebSocket frames) while a big burst is still being published.
    function publish(channelName, count, payload) {
        return new Promise(resolve => {
            let sent = 0;
            const step = () => {
                const end = Math.min(count, sent + CHUNK);
                for (; sent < end; ++sent) {
                    engine.publish({ channel: channelName, data: payload(sent) });
                }
                if (sent < count) {
                    setImmediate(step);
                } else {
                    published += count;
                    resolve(count);
                }
            };
            step();
        });
    }

    async function control(request, response, path) {
        if (request.method === 'POST' && path === '/control/publish') {
            const body = await readJson(request);
            const { count, payload } = payloadsOf(body);
            answer(response, 200, { published: await publish(body.channel, count, payload) });
        } else if (request.method === 'POST' && path === '/control/forget') {
            // Engine.Memory.destroyClient() releases the id from the namespace,
            // so clientExists() is false and Server#connect answers
            // Error.clientUnknown(clientId) = "401:<clientId>:Unknown client"
            // (protocol/error.js; Server#_advize adds
            // advice reconnect "handshake"). It also triggers 'close', whose
            // handler flushes a held connect and closes the client's WebSocket.
            const forgotten = [...clients];
            forgotten.forEach(clientId => engine.destroyClient(clientId));
            answer(response, 200, { forgotten: forgotten.length });
        } else if (request.method === 'POST' && path === '/control/refuse-subscribe') {
            const count = (await readJson(request)).count;
            if (!Number.isInteger(count) || count < 0) {
                throw new Error('"count" must be a non-negative integer');
            }
            refuseSubscribes = count;
            answer(response, 200, { refusing: count });
        } else if (request.method === 'GET' && path === '/control/stats') {
            let held = 0;
            engine._connections.forEach(conn => {
                if (conn._timeouts && conn._timeouts.has('connection')) {
                    ++held;
                }
            });
            answer(response, 200, {
                server: 'faye',
                sessions: clients.size,
                held: held,
                handshakes: handshakes,
                published: published,
            });
        } else {
            answer(response, 404, { error: `no ${request.method} ${path}` });
        }
    }

    const httpServer = http.createServer((request, response) => {
        const path = new URL(request.url, 'http://localhost').pathname;
        if (path.startsWith('/control/')) {
            control(request, response, path).catch(e => {
                if (!response.headersSent) {
                    answer(response, 400, { error: String(e && e.message || e) });
                }
            });
        } else {
            answer(response, 404, { error: `no ${path}` });
        }
    });
    // faye takes the requests (and WebSocket upgrades) for MOUNT, and hands
    // every other request to the listener above.
    adapter.attach(httpServer);
    // Long polls must outlive the Bayeux timeout.
    httpServer.requestTimeout = 0;
    httpServer.timeout = 0;

    httpServer.listen(args.port, '127.0.0.1', () => {
        const port = httpServer.address().port;
        process.stdout.write('{"listening": ' + JSON.stringify(`http://127.0.0.1:${port}`) + '}\n');
    });

    const stop = () => process.exit(0);
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
    // Started by a test through a pipe: exit when the test process goes away.
    let stdinIsPipe = false;
    try {
        stdinIsPipe = fs.fstatSync(0).isFIFO();
    } catch (e) {
        // no stdin at all
    }
    if (stdinIsPipe) {
        process.stdin.on('end', stop);
        process.stdin.on('error', stop);
        process.stdin.resume();
    }
}

main();
