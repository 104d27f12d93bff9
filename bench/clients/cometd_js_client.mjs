// A bare CometD JS client (cometd 9.0.0 + cometd-nodejs-client 2.0.0) that only counts.
//
//   node bench/clients/cometd_js_client.mjs PEERS_DIR URL CHANNEL EXPECTED
//
// PEERS_DIR is tests/peers (its node_modules holds the client). Same protocol as
// python_client.py: {"subscribed": true}, then one JSON result line, then exit
// when stdin closes.
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [peersDir, url, channel, expectedText] = process.argv.slice(2);
const expected = Number(expectedText);
const idleMs = 1000 * Number(process.env.BENCH_IDLE_TIMEOUT || '15');
const modules = path.join(peersDir, 'node_modules');
const { adapt } = await import(
    pathToFileURL(path.join(modules, 'cometd-nodejs-client', 'cometd-nodejs-client.js')).href);
adapt();
const { CometD } = await import(pathToFileURL(path.join(modules, 'cometd', 'cometd.js')).href);

const say = obj => process.stdout.write(JSON.stringify(obj) + '\n');
let received = 0;
let first = 0n;
let last = 0n;
let firstWall = 0;
let lastWall = 0;
let reported = false;
let idleTimer = null;

function report() {
    if (reported) {
        return;
    }
    reported = true;
    if (idleTimer !== null) {
        clearTimeout(idleTimer);
    }
    if (lastWall === 0) {
        lastWall = Date.now() / 1000 - Number(process.hrtime.bigint() - last) / 1e9;
    }
    say({
        received: received,
        span_seconds: Number(last - first) / 1e9,
        first_wall: firstWall,
        last_wall: lastWall,
    });
}

function onMessage() {
    const now = process.hrtime.bigint();
    if (received === 0) {
        first = now;
        firstWall = Date.now() / 1000;
    }
    ++received;
    last = now;
    if (received >= expected) {
        lastWall = Date.now() / 1000;
        report();
    } else if (idleTimer === null) {
        const check = seen => {
            idleTimer = setTimeout(() => (received === seen ? report() : check(received)), idleMs);
        };
        check(-1);
    }
}

const cometd = new CometD();
cometd.configure({ url: url, logLevel: 'warn' });
cometd.handshake(reply => {
    if (!reply.successful) {
        process.stderr.write('handshake failed: ' + JSON.stringify(reply) + '\n');
        process.exit(1);
    }
    cometd.subscribe(channel, onMessage, subscribed => {
        if (!subscribed.successful) {
            process.stderr.write('subscribe failed: ' + JSON.stringify(subscribed) + '\n');
            process.exit(1);
        }
        say({ subscribed: true });
    });
});

process.stdin.on('end', () => {
    cometd.disconnect(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
});
process.stdin.resume();
