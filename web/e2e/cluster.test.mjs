// End-to-end across a cluster: a real redis-server, two real hosts sharing
// it (--redis-url), and two Chromium pages, each on its own host, in one
// call — video and audio both ways (docs/cluster.md).
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { createConnection, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join as pjoin } from 'node:path'
import {
  startHost,
  launchBrowser,
  suitePages,
  join,
  expectRemoteVideos,
  expectRemoteAudio,
  remoteNames,
  pageProblems,
} from './support/harness.mjs'

/** A port the OS picks, free a moment ago. */
async function freePort() {
  const server = createServer()
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  const { port } = server.address()
  await new Promise((r) => server.close(r))
  return port
}

/** Starts redis-server on a free loopback port in its own temporary directory. */
async function startRedis() {
  const port = await freePort()
  const dir = mkdtempSync(pjoin(tmpdir(), 'webrtc-chat-redis-'))
  const child = spawn(
    'redis-server',
    ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no', '--dir', dir],
    { stdio: 'ignore' },
  )
  const started = new Promise((res, rej) => {
    child.once('error', (e) =>
      rej(
        e.code === 'ENOENT'
          ? new Error('redis-server is not installed: install it (Debian: apt-get install redis-server; scripts/test.sh does)')
          : e,
      ),
    )
    child.once('spawn', res)
  })
  await started
  const stop = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    rmSync(dir, { recursive: true, force: true })
  }
  process.once('exit', stop)
  const deadline = Date.now() + 10_000
  for (;;) {
    const pong = await new Promise((res) => {
      const s = createConnection({ host: '127.0.0.1', port }, () => s.write('PING\r\n'))
      s.once('data', (d) => {
        s.destroy()
        res(d.toString().startsWith('+PONG'))
      })
      s.once('error', () => res(false))
    })
    if (pong) break
    if (Date.now() > deadline) {
      stop()
      throw new Error(`redis-server did not answer on port ${port} within 10 s`)
    }
    await new Promise((r) => setTimeout(r, 50))
  }
  return { url: `redis://127.0.0.1:${port}/0`, stop }
}

describe('two hosts, one call', { timeout: 280_000 }, () => {
  let redis, hostA, hostB, browser
  const { open, closeAll } = suitePages(() => browser)

  before(async () => {
    redis = await startRedis()
    const args = ['--redis-url', redis.url, '--turn-secret', 'e2e-cluster-secret']
    hostA = await startHost({ args })
    hostB = await startHost({ args })
    browser = await launchBrowser()
  })
  after(async () => {
    await closeAll()
    await browser?.close().catch(() => {})
    await hostA?.stop()
    await hostB?.stop()
    redis?.stop()
  })

  it('Alice on one host and Bob on the other see and hear each other', async () => {
    const room = `cluster-${randomUUID().slice(0, 8)}`
    const alice = await open()
    const bob = await open()
    await join(alice, hostA.base, room, 'Alice')
    await join(bob, hostB.base, room, 'Bob')

    for (const [p, who] of [[alice, 'Alice'], [bob, 'Bob']]) {
      const v = await expectRemoteVideos(p, 1)
      assert.ok(v[0].width > 0, `${who} sees video`)
      assert.ok(v[0].advanced && v[0].framesAdvanced, `${who}'s remote video is playing`)
    }
    for (const [p, who] of [[alice, 'Alice'], [bob, 'Bob']]) {
      await expectRemoteAudio(p, 1).catch((e) => assert.fail(`${who} hears nothing: ${e.message}`))
    }
    assert.deepEqual(await remoteNames(alice), ['Bob'])
    assert.deepEqual(await remoteNames(bob), ['Alice'])
    for (const p of [alice, bob]) assert.deepEqual(pageProblems(p), [], 'the page reported no errors')
  })
})
