#!/usr/bin/env node
'use strict';
// A Bayeux test peer: cometd-nodejs-server (long-polling only) mounted where GWS
// serves CometD, plus control endpoints that the tests drive.
//
//   node cometd-server.js [--port N] [--timeout-ms N]
//                         [--gws-stub N [--gws-stub-start S] [--gws-stub-unlisted]]
//
// Prints exactly one line, {"listening": "http://127.0.0.1:PORT"}, when ready.
//
//   POST /control/publish  {"channel": C, "count": N, "start": S}
//                          publishes N GWS-shaped EmailStateChangeMessage payloads
//                          with referenceId S..S+N-1 (email id "SEQ" + S..S+N-1 padded
//                          to 10 digits), in order;
//                          or {"channel": C, "data": [...]} publishes the given payloads.
//                          Optional "rate": R (messages per second) paces a count
//                          publish: every "tick_ms" (default 5) it publishes as many as
//                          are due by then (R * elapsed), so the stream keeps its rate
//                          whatever the timer jitter. Without "rate": as fast as it can.
//                          Optional "hold": true queues the whole publish for every
//                          session (a server-side session batch) and releases it at
//                          once when all is published: the next /meta/connect answer
//                          of each client then carries the whole burst (as a server
//                          does for a client that was busy), and the answer says when:
//                          "released_at" (unix seconds, ms resolution).
//                          Answers {"published": N} once all are handed to the server
//                          ({"published": N, "seconds": S} with a rate).
//   POST /control/forget   removes every client session (ServerSession.disconnect()),
//                          so the next /meta/connect of a client is answered
//                          402::session_unknown with advice {reconnect: "handshake"}.
//   POST /control/refuse-subscribe  {"count": N}: refuse the next N /meta/subscribe
//                          requests with 403::subscribe_denied (fault injection).
//   GET  /control/stats    {"sessions": n, "held": n, "handshakes": n, "published": n}
//
// --gws-stub N: also answers the GWS REST calls a gws-notifyd daemon makes, so a
// daemon can run against this peer (benchmarks). No auth, no CSRF, no cookies:
//   GET  /api/v2/me             {"statusCode": 0, "user": {}}
//   POST /api/v2/me             {"statusCode": 0}   (StartContactCenterSession etc.)
//   GET  /api/v2/me/emails      {"statusCode": 0, "emails": [N emails]}: ids "SEQ" +
//                               S..S+N-1 (S = --gws-stub-start, default 0), each
//                               {"id": .., "state": "Composing"}; an empty list with
//                               --gws-stub-unlisted (the daemon then GETs each one)
//   GET  /api/v2/me/emails/{id} {"statusCode": 0, "email": {...}} for one of those
//                               ids, else 404 {"statusCode": 6}
//   GET  /control/stats         then also counts "gwsRequests" by kind.
//
// Exits on SIGTERM/SIGINT, or when stdin is a pipe and closes (the test went away).

const fs = require('fs');
const http = require('http');
const cometd = require('cometd-nodejs-server');

const MOUNT = '/api/v2/notifications';
const CHUNK = 5000; // publishes per event-loop turn, so the server keeps answering

function parseArgs(argv) {
    const args = { port: 0, timeoutMs: 25000, gwsStub: null, gwsStubStart: 0, gwsStubUnlisted: false };
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
            case '--gws-stub': args.gwsStub = next(); break;
            case '--gws-stub-start': args.gwsStubStart = next(); break;
            case '--gws-stub-unlisted': args.gwsStubUnlisted = true; break;
            default: throw new Error(`unknown argument ${argv[i]}`);
        }
    }
    return args;
}

// A GWS EmailStateChangeMessage: its data serialises to about 450 bytes, about 480
// with the {"channel": ..., "data": ...} envelope (a 100-character body).
const BODY = '<p>Thank you for contacting us. Your request has been handled; ' +
    'our reply was sent.</p>';

function seqId(n) {
    return 'SEQ' + String(n).padStart(10, '0');
}

function gwsMessage(n) {
    const id = seqId(n);
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

// {rate, tickMs} of a paced publish, or null for "as fast as possible".
function pacingOf(body) {
    if (body.rate === undefined) {
        return null;
    }
    const rate = body.rate;
    const tickMs = body.tick_ms === undefined ? 5 : body.tick_ms;
    if (typeof rate !== 'number' || !(rate > 0) || !Number.isFinite(rate)) {
        throw new Error('"rate" must be a positive number of messages per second');
    }
    if (!Number.isInteger(tickMs) || tickMs < 1) {
        throw new Error('"tick_ms" must be a positive integer');
    }
    return { rate: rate, tickMs: tickMs };
}

// The GWS REST calls of a gws-notifyd daemon, answered from a fixed list of
// emails (see the header). Returns false when the path is not one of them.
function gwsStub(args) {
    const start = args.gwsStubStart;
    const end = start + args.gwsStub;
    const requests = { getMe: 0, postMe: 0, listEmails: 0, getEmail: 0 };
    const emailOf = n => ({ id: seqId(n), state: 'Composing' });
    let listed = null; // serialised once: a few MB for a few 100,000 emails
    const listedText = () => {
        if (listed === null) {
            const emails = [];
            if (!args.gwsStubUnlisted) {
                for (let n = start; n < end; ++n) {
                    emails.push(emailOf(n));
                }
            }
            listed = JSON.stringify({ statusCode: 0, emails: emails });
        }
        return listed;
    };
    const send = (response, status, text) => {
        response.writeHead(status, {
            'Content-Type': 'application/json',
            'Content-Length': Buffer.byteLength(text),
        });
        response.end(text);
    };
    const handle = (request, response, path) => {
        const method = request.method;
        if (path === '/api/v2/me' && method === 'GET') {
            ++requests.getMe;
            send(response, 200, '{"statusCode":0,"user":{}}');
        } else if (path === '/api/v2/me' && method === 'POST') {
            ++requests.postMe;
            request.resume(); // the body (StartContactCenterSession) is not looked at
            request.on('end', () => send(response, 200, '{"statusCode":0}'));
        } else if (path === '/api/v2/me/emails' && method === 'GET') {
            ++requests.listEmails;
            send(response, 200, listedText());
        } else if (path.startsWith('/api/v2/me/emails/') && method === 'GET') {
            ++requests.getEmail;
            const id = decodeURIComponent(path.slice('/api/v2/me/emails/'.length));
            const match = /^SEQ(\d{10})$/.exec(id);
            const n = match ? Number(match[1]) : -1;
            if (n >= start && n < end) {
                send(response, 200, JSON.stringify({ statusCode: 0, email: emailOf(n) }));
            } else {
                send(response, 404, JSON.stringify(
                    { statusCode: 6, statusMessage: `Email '${id}' not found` }));
            }
        } else {
            return false;
        }
        return true;
    };
    return { handle: handle, requests: requests };
}

function main() {
    const args = parseArgs(process.argv.slice(2));
    const server = cometd.createCometDServer({ timeout: args.timeoutMs });
    const stub = args.gwsStub === null ? null : gwsStub(args);

    const sessions = new Map();
    let handshakes = 0;
    let published = 0;
    let refuseSubscribes = 0;
    // A policy whose canSubscribe says no makes _metaSubscribe answer
    // 403::subscribe_denied (with the subscription echoed).
    server.policy = {
        canSubscribe: (session, message, channel, callback) => {
            if (refuseSubscribes > 0) {
                --refuseSubscribes;
                callback(undefined, false);
            } else {
                callback(undefined, true);
            }
        },
    };
    server.addListener('sessionAdded', session => {
        sessions.set(session.id, session);
        ++handshakes;
    });
    server.addListener('sessionRemoved', session => {
        sessions.delete(session.id);
    });

    // Publishes in order, a chunk per event-loop turn; resolves with the count
    // once every publish callback has run. The channel is looked up by name for
    // every message: cometd-nodejs-server sweeps a channel about 1 s after its
    // last subscriber left, and a resubscribing client gets a NEW channel object.
    function publish(channelName, count, payload, pacing) {
        return new Promise((resolve, reject) => {
            let sent = 0;
            let done = 0;
            let failed = false;
            const finished = (failure) => {
                if (failed) {
                    return;
                }
                if (failure) {
                    failed = true;
                    reject(failure);
                    return;
                }
                if (++done === count) {
                    published += count;
                    resolve(count);
                }
            };
            if (count === 0) {
                resolve(0);
                return;
            }
            const step = () => {
                const end = Math.min(count, sent + CHUNK);
                for (; sent < end && !failed; ++sent) {
                    server.createServerChannel(channelName).publish(null, payload(sent), finished);
                }
                if (sent < count && !failed) {
                    setImmediate(step);
                }
            };
            if (pacing === null) {
                step();
                return;
            }
            // Paced: what is due is computed from the elapsed time, so timer
            // jitter changes the chunk sizes, never the rate.
            const began = process.hrtime.bigint();
            const tick = () => {
                const elapsed = Number(process.hrtime.bigint() - began) / 1e9;
                const due = Math.min(count, Math.floor(elapsed * pacing.rate) + 1);
                for (; sent < due && !failed; ++sent) {
                    server.createServerChannel(channelName).publish(null, payload(sent), finished);
                }
                if (sent < count && !failed) {
                    setTimeout(tick, pacing.tickMs);
                }
            };
            tick();
        });
    }

    async function control(request, response, path) {
        if (request.method === 'POST' && path === '/control/publish') {
            const body = await readJson(request);
            const { count, payload } = payloadsOf(body);
            const pacing = Array.isArray(body.data) ? null : pacingOf(body);
            const hold = body.hold === true;
            if (hold && pacing !== null) {
                throw new Error('"hold" and "rate" do not go together');
            }
            const held = hold ? [...sessions.values()] : [];
            held.forEach(session => session._startBatch());
            const began = process.hrtime.bigint();
            let done;
            try {
                done = await publish(body.channel, count, payload, pacing);
            } finally {
                held.forEach(session => session._endBatch());
            }
            if (hold) {
                answer(response, 200, { published: done, released_at: Date.now() / 1000 });
            } else if (pacing === null) {
                answer(response, 200, { published: done });
            } else {
                const seconds = Number(process.hrtime.bigint() - began) / 1e9;
                answer(response, 200, { published: done, seconds: seconds });
            }
        } else if (request.method === 'POST' && path === '/control/forget') {
            // ServerSession.disconnect() removes the session from the server
            // (cometd._removeServerSession) and delivers a /meta/disconnect to it,
            // which also wakes a held /meta/connect. The client's next message
            // finds no session: 402::session_unknown, advice reconnect "handshake".
            const forgotten = [...sessions.values()];
            forgotten.forEach(session => session.disconnect());
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
            sessions.forEach(session => {
                if (session._scheduler) {
                    ++held;
                }
            });
            const stats = {
                server: 'cometd-nodejs-server',
                sessions: sessions.size,
                held: held,
                handshakes: handshakes,
                published: published,
            };
            if (stub !== null) {
                stats.gwsRequests = stub.requests;
            }
            answer(response, 200, stats);
        } else {
            answer(response, 404, { error: `no ${request.method} ${path}` });
        }
    }

    const httpServer = http.createServer((request, response) => {
        const path = new URL(request.url, 'http://localhost').pathname;
        if (path === MOUNT || path.startsWith(MOUNT + '/')) {
            // A request that arrives on a keep-alive socket before the previous
            // response there has emitted 'finish' gets a response whose socket Node
            // assigns later. cometd-nodejs-server 1.2.1 (_respond) takes a missing
            // response.socket for "connection destroyed": it never answers, and the
            // messages it drained for that answer are lost (seen: 10,000 of a burst,
            // then the session expired). So hand the request over once it has one.
            if (response.socket) {
                server.handle(request, response);
            } else {
                response.once('socket', () => server.handle(request, response));
            }
        } else if (path.startsWith('/control/')) {
            control(request, response, path).catch(e => {
                if (!response.headersSent) {
                    answer(response, 400, { error: String(e && e.message || e) });
                }
            });
        } else if (stub !== null && stub.handle(request, response, path)) {
            // answered by the GWS stub
        } else {
            answer(response, 404, { error: `no ${path}` });
        }
    });
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
