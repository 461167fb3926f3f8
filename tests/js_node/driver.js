#!/usr/bin/env node
// A reference JavaScript mesh node for tests/js_node.rs, built only from the reference's own
// mesh/cache.js, mesh/sync/sync.js and mesh/bridge-ingest.js (required from the directory
// given; nothing of them is copied here). The reference ships no sync handler, only the
// functions ("add a handler that detects type: 'sync_summary' ... and calls these
// functions", mesh/sync/README.md); this is that handler, as small as it can be.
//
//   node driver.js serve REF HOME NODE_ID   answer POST /bridge?handleRequest=1; prints "listening PORT"
//   node driver.js push REF HOME NODE_ID URL [ROUNDS]   sync by posting to a meshd webhook
//   node driver.js write REF HOME NODE_ID JSON   {memory:[{scope,key,value,ts}], skills:[{name,content,ts}]}
//   node driver.js state REF HOME            prints {memory, skills}
'use strict';

const fs = require('fs');
const http = require('http');
const path = require('path');

const [mode, ref, home, nodeId, ...rest] = process.argv.slice(2);
const cache = require(path.join(ref, 'mesh', 'cache.js'));
const sync = require(path.join(ref, 'mesh', 'sync', 'sync.js'));
const { ingestFromBridge } = require(path.join(ref, 'mesh', 'bridge-ingest.js'));

const summary = () => sync.buildSummary(nodeId, home, { includeHash: true });

// What this node answers to one message, as meshd answers it.
function answer(msg) {
  if (!msg || typeof msg !== 'object') return [];
  if (msg.type === 'sync_summary') {
    const need = sync.computeRequest(msg, home);
    const out = [];
    if (need.memory.length || need.skills.length) {
      out.push({ type: 'sync_request', requestId: 'js-' + Date.now(), nodeId, ...need, ts: Math.floor(Date.now() / 1000) });
    }
    out.push(summary());
    return out;
  }
  if (msg.type === 'sync_request') return [sync.buildDelta(msg, nodeId, home, msg.requestId)];
  if (msg.type === 'sync_delta') {
    sync.mergeDelta(msg, home);
    return [summary()];
  }
  return [];
}

function serve() {
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        return res.end('{"ingested":0,"memory":0,"skill":0}');
      }
      const messages = Array.isArray(body) ? body : [body];
      const result = ingestFromBridge(messages.filter((m) => m && !String(m.type).startsWith('sync_')), home);
      const response = messages.flatMap(answer);
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ ...result, response }));
    });
  });
  server.listen(0, '127.0.0.1', () => console.log('listening ' + server.address().port));
}

async function post(url, msg) {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(msg) });
  if (!res.ok) throw new Error(url + ' answered ' + res.status + ': ' + (await res.text()));
  const body = await res.json();
  return Array.isArray(body.response) ? body.response : body.response ? [body.response] : [];
}

// This node drives: posts its summary; merges the deltas, answers the requests; until meshd
// has nothing to ask or send.
async function push(url, rounds) {
  let outgoing = [summary()];
  for (let round = 1; round <= rounds; round++) {
    const answers = [];
    for (const msg of outgoing) answers.push(...(await post(url, msg)));
    if (answers.length === 0) return console.log(JSON.stringify({ rounds: round, inStep: true }));
    outgoing = [];
    for (const msg of answers) {
      if (msg.type === 'sync_delta') sync.mergeDelta(msg, home);
    }
    for (const msg of answers) {
      if (msg.type === 'sync_request') outgoing.push(sync.buildDelta(msg, nodeId, home, msg.requestId));
    }
    outgoing.push(summary());
  }
  throw new Error('not in step after ' + rounds + ' rounds');
}

function write(spec) {
  for (const m of spec.memory || []) {
    cache.writeMeshMemoryEntry({ scope: m.scope, key: m.key, value: m.value, nodeId, ts: m.ts }, home);
  }
  for (const s of spec.skills || []) {
    cache.writeMeshSkill(s.name, s.content, home);
    if (s.ts) {
      const file = path.join(cache.getMeshPaths(home).skillsDir, s.name + '.md');
      fs.utimesSync(file, s.ts, s.ts);
    }
  }
}

function state() {
  const skills = {};
  for (const file of cache.listMeshSkills(home)) {
    const name = file.replace(/\.(md|txt)$/, '');
    skills[name] = cache.readMeshSkill(name, home);
  }
  console.log(JSON.stringify({ memory: cache.readMeshMemory(home), skills }));
}

if (mode === 'serve') serve();
else if (mode === 'push') push(rest[0], Number(rest[1] || 6)).catch((e) => { console.error(e.message); process.exit(1); });
else if (mode === 'write') write(JSON.parse(rest[0]));
else if (mode === 'state') state();
else { console.error('unknown mode ' + mode); process.exit(2); }
