// End-to-end with the example policies dropped in (password-rooms, moderation),
// built and installed as an operator does (scripts/install-policy.sh), against
// the real host and Debian Chromium.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { startHost, launchBrowser, suitePages, pageProblems, expectRemoteVideos, remoteNames, shot, sleep, axeViolations } from './support/harness.mjs'

const MOBILE = { viewport: { width: 390, height: 844 }, isMobile: true }

describe('password rooms and moderation, from the client', { timeout: 280_000 }, () => {
  let host, browser
  const { open, closeAll, all: pages } = suitePages(() => browser)
  const room = `vault-${randomUUID().slice(0, 8)}`
  const PASSWORD = 'open sesame 42'
  let ana, ben

  /** Fill the login form at ?room= and submit; the password field only when given. */
  async function login(page, name, password) {
    await page.locator('#username').fill(name)
    if (password !== undefined) await page.locator('#room-password').fill(password)
    await page.locator('form.login-form button[type=submit]').click()
  }

  before(
    async () => {
      // building the two policies takes a while the first time
      host = await startHost({ policies: ['password-rooms', 'moderation'], timeoutMs: 120_000 })
      browser = await launchBrowser()
    },
    { timeout: 900_000 },
  )
  after(async () => {
    await closeAll()
    await browser?.close().catch(() => {})
    await host?.stop()
  })

  it('password room: set by the first member; refused without it and with a wrong one; admitted with it', async () => {
    ana = await open()
    await ana.goto(`${host.base}/?room=${room}`)
    // the server's hello says passwords are possible: the field appears
    await ana.locator('#room-password').waitFor({ timeout: 15_000 })
    assert.equal(await ana.locator('#room-password').getAttribute('type'), 'password')
    await login(ana, 'Ana', PASSWORD)
    await ana.locator('.room').waitFor()

    ben = await open(MOBILE)
    await ben.goto(`${host.base}/?room=${room}`)
    await ben.locator('#room-password').waitFor({ timeout: 15_000 })
    await login(ben, 'Ben')
    const required = ben.locator('.error[data-error-type=passwordRequired]')
    await required.waitFor({ timeout: 20_000 })
    assert.match(await required.innerText(), /This room has a password/)
    assert.equal(await ben.evaluate(() => document.activeElement?.id), 'room-password', 'the cursor waits in the password field')
    assert.equal(await ben.locator('.room').count(), 0)
    await shot(ben, 'password-required-mobile.png')

    await login(ben, 'Ben', 'guess')
    const wrong = ben.locator('.error[data-error-type=wrongPassword]')
    await wrong.waitFor({ timeout: 20_000 })
    assert.match(await wrong.innerText(), /That password is wrong for this room/)
    assert.equal(await ben.locator('#room-password').inputValue(), '', 'a wrong password is cleared')
    await shot(ben, 'password-wrong-mobile.png')
    assert.deepEqual(await axeViolations(ben), [], 'refusal screen: no serious accessibility violations')
    // refusals reached nobody
    assert.equal(await ana.locator('.entry.notice', { hasText: 'Ben joined' }).count(), 0)

    await login(ben, 'Ben', PASSWORD)
    await ben.locator('.room').waitFor({ timeout: 20_000 })
    for (const p of [ana, ben]) {
      const v = await expectRemoteVideos(p, 1)
      assert.ok(v[0].width > 0 && v[0].advanced, 'admitted: video plays')
    }
    await ana.getByText('Ben joined').waitFor()
    // the password is in memory only: not in the address, not in storage
    for (const p of [ana, ben]) {
      assert.ok(!decodeURIComponent(p.url()).includes(PASSWORD), 'not in the URL')
      const stored = await p.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }))
      assert.ok(!stored.includes(PASSWORD), 'not in storage')
    }
  })

  it('moderation: the owner removes a member (after confirming), who sees why and stays out', async () => {
    assert.ok(ana && ben, 'the previous test left Ana and Ben in the room')
    // only the owner (the first member) sees remove controls
    const remove = ana.locator('.tile.remote button.remove')
    await remove.waitFor({ timeout: 15_000 })
    assert.equal(await remove.getAttribute('aria-label'), 'Remove Ben from the room')
    assert.equal(await ben.locator('button.remove').count(), 0, 'Ben does not own the room')

    await remove.click()
    const dialog = ana.locator('.tile.remote [role=alertdialog]')
    await dialog.waitFor()
    assert.match(await dialog.innerText(), /Remove Ben from the room\?/)
    await shot(ana, 'remove-confirm-desktop.png')
    assert.deepEqual(await axeViolations(ana), [], 'room with the remove dialog: no serious accessibility violations')
    await dialog.getByRole('button', { name: 'Remove', exact: true }).click()

    const why = ben.locator('.error[data-error-type=kicked]')
    await why.waitFor({ timeout: 20_000 })
    assert.match(await why.innerText(), /Ana removed you from the room/)
    // not "cannot be reached, retrying": it is not retrying
    assert.equal(await ben.locator('.status').innerText(), '')
    await shot(ben, 'removed-mobile.png')
    await ana.getByText('You removed Ben from the room').waitFor({ timeout: 15_000 })
    await ana.waitForFunction(() => document.querySelectorAll('.tile.remote').length === 0)

    // and stays out: longer than the reconnect backoff's first steps (0.3, 1, 2 s)
    await sleep(4500)
    assert.equal(await ben.locator('.room').count(), 0, 'Ben is not back in the room')
    assert.equal(await ben.evaluate(() => window.__webrtcChat.signaling.status), 'idle', 'no new socket was opened, none is coming')
    assert.equal(await ana.locator('.tile.remote').count(), 0)
    assert.equal(await ana.locator('.entry.notice', { hasText: 'Ben joined' }).count(), 1, 'no second join from Ben')
  })

  it('a network blip still reconnects, and the rejoin gives the password again', async () => {
    assert.ok(ana, 'Ana is still in the room')
    const cleo = await open()
    await cleo.goto(`${host.base}/?room=${room}`)
    await cleo.locator('#room-password').waitFor({ timeout: 15_000 })
    await login(cleo, 'Cleo', PASSWORD)
    await cleo.locator('.room').waitFor({ timeout: 20_000 })
    await expectRemoteVideos(ana, 1)

    // the signaling socket drops (not a policy close): reconnect, log in again with the remembered password
    await cleo.evaluate(() => window.__webrtcChat.signaling.ws.close())
    await cleo.getByText('Reconnected to the room.').waitFor({ timeout: 20_000 })
    await ana.getByText('Cleo left').waitFor()
    await ana.waitForFunction(
      () => [...document.querySelectorAll('.entry.notice')].filter((e) => e.textContent.includes('Cleo joined')).length === 2,
      null,
      { timeout: 20_000 },
    )
    for (const p of [ana, cleo]) {
      const v = await expectRemoteVideos(p, 1)
      assert.ok(v[0].width > 0 && v[0].advanced, 'video is back after the rejoin')
    }
    assert.deepEqual(await remoteNames(ana), ['Cleo'])
  })

  it('no page reported an error (uncaught, console.error, CSP violation)', () => {
    assert.ok(pages.length > 0)
    for (const p of pages) assert.deepEqual(pageProblems(p), [], p.url())
  })
})
