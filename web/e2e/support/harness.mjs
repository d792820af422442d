// Shared e2e plumbing: start the real host binary,
// launch Debian's Chromium through playwright-core, and page helpers.
import { spawn, execFileSync } from 'node:child_process'
import { mkdtempSync, mkdirSync, rmSync, existsSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join as pjoin, resolve, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import assert from 'node:assert/strict'
import { chromium } from 'playwright-core'

export const WEB_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const ARTIFACTS_DIR = resolve(WEB_DIR, process.env.ARTIFACTS_DIR ?? '../test-artifacts')
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'

export const CHROMIUM_ARGS = [
  '--headless=new',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--ignore-certificate-errors',
  '--autoplay-policy=no-user-gesture-required',
]

/**
 * Build policy crates and drop them into `dir` the way an operator does
 * (scripts/install-policy.sh: wasm32-wasip2, atomic rename). `policies` is a
 * list of crate names, installed in that order (10-, 20-, …).
 */
export function installPolicies(policies, dir) {
  policies.forEach((crate, i) => {
    execFileSync('bash', [resolve(WEB_DIR, '..', 'scripts', 'install-policy.sh'), crate, dir, String(10 * (i + 1))], {
      stdio: ['ignore', 'ignore', 'inherit'],
      timeout: 600_000,
    })
  })
}

/**
 * Start a host on ports the OS picks; resolves with { base, port, turnPort, stop() }
 * once it logs its https://localhost:PORT/ line (and, with `policies`, the
 * policy chain they make). It gets a temporary policy cache and none of this
 * process's WEBRTC_CHAT_* settings.
 */
export async function startHost({ roomMax = 10, timeoutMs = 90_000, args: extraArgs = [], policies = [] } = {}) {
  const cmd = resolve(WEB_DIR, process.env.HOST_BIN ?? '../target/debug/host')
  if (!existsSync(cmd)) throw new Error(`host binary not found at ${cmd} (set HOST_BIN, or build it: cargo build -p host)`)
  const tmp = mkdtempSync(pjoin(tmpdir(), 'webrtc-chat-e2e-'))
  mkdirSync(pjoin(tmp, 'ssl'))
  mkdirSync(pjoin(tmp, 'plugins'))
  if (policies.length) installPolicies(policies, pjoin(tmp, 'plugins'))
  const args = [
    '--bind', '127.0.0.1',
    '--https-port', '0',
    '--turn-port', '0',
    '--turn-tls-port', '0',
    '--turn-allow-loopback',
    '--metrics-addr', 'off',
    '--ssl-dir', pjoin(tmp, 'ssl'),
    '--plugins-dir', pjoin(tmp, 'plugins'),
    '--cache-dir', pjoin(tmp, 'cache'),
    '--room-max', String(roomMax),
    ...extraArgs,
  ]
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WEBRTC_CHAT_')))
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...env, NO_COLOR: '1' } })
  let log = ''
  const serving = /https:\/\/localhost:(\d+)\//
  const chain = policies.length ? `policy chain: ${policies.map((c, i) => `${10 * (i + 1)}-${c}`).join(' → ')} → default` : null
  const cleanup = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    rmSync(tmp, { recursive: true, force: true })
  }
  // never leave a host behind, even if the test process dies
  process.once('exit', cleanup)
  let port
  try {
    port = await new Promise((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`host did not report https://localhost:PORT/ within ${timeoutMs} ms:\n${log.slice(-3000)}`)), timeoutMs)
      const onData = (d) => {
        log += d.toString()
        const m = serving.exec(log)
        if (m && (!chain || log.includes(chain))) {
          clearTimeout(timer)
          res(Number(m[1]))
        }
      }
      child.stdout.on('data', onData)
      child.stderr.on('data', onData)
      child.on('exit', (code) => {
        clearTimeout(timer)
        rej(new Error(`host exited (${code}) before it was ready:\n${log.slice(-3000)}`))
      })
      child.on('error', (e) => {
        clearTimeout(timer)
        rej(new Error(`host could not be started: ${e.message}`))
      })
    })
  } catch (e) {
    cleanup()
    throw e
  }
  const turnPort = Number(/STUN\/TURN on Udp [^,\s]*:(\d+)/.exec(log)?.[1] ?? 0)
  // keep draining output so the pipe never fills
  child.stdout.removeAllListeners('data')
  child.stderr.removeAllListeners('data')
  child.removeAllListeners('exit')
  child.stdout.on('data', (d) => (log = (log + d).slice(-20000)))
  child.stderr.on('data', (d) => (log = (log + d).slice(-20000)))
  return {
    base: `https://localhost:${port}`,
    port,
    turnPort,
    log: () => log,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM')
        await Promise.race([new Promise((r) => child.once('exit', r)), sleep(3000)])
        if (child.exitCode === null) child.kill('SIGKILL')
      }
      cleanup()
      process.removeListener('exit', cleanup)
    },
  }
}

/** `args` adds to (or, for the same switch, replaces) CHROMIUM_ARGS, e.g. `--use-fake-device-for-media-stream=device-count=2`. */
export async function launchBrowser({ args = [] } = {}) {
  const names = new Set(args.map((a) => a.split('=')[0]))
  const all = [...CHROMIUM_ARGS.filter((a) => !names.has(a.split('=')[0])), ...args]
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: all, timeout: 60_000 })
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** Sample `read()` until `ok(value)`, at most `ms`; returns the value (or fails with the last one). */
export async function until(read, ok, ms = 30_000) {
  const deadline = Date.now() + ms
  for (;;) {
    const v = await read()
    if (ok(v)) return v
    if (Date.now() > deadline) throw new Error(`not reached within ${ms} ms: ${JSON.stringify(v)}`)
    await sleep(200)
  }
}

export async function newPage(browser, { viewport = { width: 1280, height: 800 }, locale = 'en-US', isMobile = false } = {}) {
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport,
    locale,
    isMobile,
    hasTouch: isMobile,
    deviceScaleFactor: 1,
    permissions: ['camera', 'microphone', 'clipboard-read', 'clipboard-write'],
  })
  const page = await context.newPage()
  page.setDefaultTimeout(30_000)
  // Everything the page reports as wrong fails the test (pageProblems):
  // uncaught errors, console errors and Content-Security-Policy violations.
  const problems = []
  problemsOf.set(page, problems)
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`))
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console.error: ${m.text()}`)
  })
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline'}`)
    })
  })
  return page
}

const problemsOf = new WeakMap()

/**
 * The pages a suite opens, each in its own browser context (`browser()` is
 * read when a page opens: suites launch the browser in `before`).
 * - `open(opts)`: a new page ({@link newPage}), remembered;
 * - `close(page, expected)`: closes it and fails on anything it reported as
 *   wrong ({@link pageProblems}) beyond the `expected` patterns;
 * - `closeAll()`: closes every page still open without judging it (a failed
 *   test's pages: its failure is already reported);
 * - `all`: every page opened so far, open or closed (for a last "no page
 *   reported an error" check).
 */
export function suitePages(browser) {
  const all = []
  const live = new Set()
  const shut = async (p) => {
    live.delete(p)
    await p.context().close().catch(() => {})
  }
  return {
    all,
    open: async (opts) => {
      const p = await newPage(browser(), opts)
      all.push(p)
      live.add(p)
      return p
    },
    close: async (p, expected = []) => {
      await shut(p)
      assert.deepEqual(pageProblems(p, expected), [], 'the page reported no errors')
    },
    closeAll: async () => {
      for (const p of [...live]) await shut(p)
    },
  }
}

/** What went wrong on the page so far (page errors, console errors, CSP violations), minus `expected` patterns. */
export function pageProblems(page, expected = []) {
  return (problemsOf.get(page) ?? []).filter((p) => !expected.some((re) => re.test(p)))
}

/**
 * Wait until each of the page's peer connections receives sound: inbound
 * RTP audio packets and audio energy (not silence) both rise between two
 * samples.
 */
export async function expectRemoteAudio(page, n, timeout = 30_000) {
  const sample = () =>
    page.evaluate(async () => {
      const out = []
      for (const pc of window.__webrtcChat.peerConnections().values()) {
        const stats = await pc.getStats()
        let packets = 0
        let energy = 0
        stats.forEach((s) => {
          if (s.type === 'inbound-rtp' && s.kind === 'audio') {
            packets += s.packetsReceived ?? 0
            energy += s.totalAudioEnergy ?? 0
          }
        })
        out.push({ packets, energy })
      }
      return out
    })
  const deadline = Date.now() + timeout
  let first = await sample()
  for (;;) {
    await sleep(500)
    const next = await sample()
    // Chromium's fake microphone beeps: about 0.1 of energy per half second,
    // where a muted or silent track adds about 1e-9.
    const rising =
      next.length === n &&
      first.length === n &&
      next.every((x, i) => x.packets > first[i].packets && x.energy - first[i].energy > 0.001)
    if (rising) return next
    if (Date.now() > deadline) throw new Error(`no rising inbound audio on ${n} connection(s): ${JSON.stringify({ first, next })}`)
    first = next
  }
}

/** Open the app with ?room= filled in, type a name, log in, and wait for the room screen. */
export async function join(page, base, room, name, query = '', { keyboard = false } = {}) {
  await page.goto(`${base}/?room=${encodeURIComponent(room)}${query}`)
  if (keyboard) {
    // the room came from the link, so focus starts in the name field
    await page.waitForFunction(() => document.activeElement?.id === 'username')
    await page.keyboard.type(name)
    await page.keyboard.press('Enter')
  } else {
    await page.locator('#username').fill(name)
    await page.locator('form.login-form button[type=submit]').click()
  }
  await page.locator('.room').waitFor({ timeout: 30_000 })
}

/** Wait until `n` remote tiles play video with real frames, and that time advances in each. */
export async function expectRemoteVideos(page, n, timeout = 45_000) {
  await page.waitForFunction(
    (n) => {
      const vids = [...document.querySelectorAll('.tile.remote video')]
      return vids.length === n && vids.every((v) => v.videoWidth > 0 && v.readyState >= 2)
    },
    n,
    { timeout, polling: 250 },
  )
  const sample = () =>
    page.evaluate(() =>
      [...document.querySelectorAll('.tile.remote video')].map((v) => ({
        w: v.videoWidth,
        t: v.currentTime,
        frames: v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality().totalVideoFrames : 0,
      })),
    )
  const a = await sample()
  await sleep(1200)
  const b = await sample()
  return a.map((x, i) => ({ width: x.w, advanced: b[i].t > x.t, framesAdvanced: b[i].frames > x.frames }))
}

export async function remoteNames(page) {
  return page.locator('.tile.remote .namebar .name').allInnerTexts()
}

const AXE_SOURCE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8')

/** Run axe-core (WCAG 2.x A/AA rules) on the page; returns serious/critical violations. */
export async function axeViolations(page) {
  // evaluated through the DevTools protocol: not an inline <script>, so the host's CSP allows it
  if (!(await page.evaluate(() => !!window.axe))) await page.evaluate(AXE_SOURCE)
  const res = await page.evaluate(async () => {
    const r = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } })
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5) }))
  })
  return res.filter((v) => v.impact === 'serious' || v.impact === 'critical')
}

export async function shot(page, file) {
  mkdirSync(ARTIFACTS_DIR, { recursive: true })
  await page.screenshot({ path: pjoin(ARTIFACTS_DIR, file) })
}
