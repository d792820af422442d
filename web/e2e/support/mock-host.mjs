// A stand-in for the real host, for developing the client before/without the
// Rust host: HTTPS static server (SPA fallback) + protocol.md signaling on /ws.
// No TURN. Used by the e2e suite only when E2E_MOCK=1.
// Usage: node e2e/support/mock-host.mjs --dir dist --port 8443 [--room-max 10]
import https from 'node:https'
import { readFileSync, existsSync, statSync, mkdtempSync } from 'node:fs'
import { join, extname, normalize } from 'node:path'
import { execFileSync } from 'node:child_process'
import { tmpdir } from 'node:os'
import { randomUUID } from 'node:crypto'
import { WebSocketServer } from 'ws'

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
)
const dir = args.dir ?? 'dist'
const port = Number(args.port ?? 8443)
const roomMax = Number(args['room-max'] ?? 10)

const certDir = mkdtempSync(join(tmpdir(), 'mockhost-'))
execFileSync('openssl', [
  'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=localhost',
  '-keyout', join(certDir, 'key.pem'), '-out', join(certDir, 'cert.pem'),
], { stdio: 'ignore' })

const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.json': 'application/json', '.png': 'image/png', '.svg': 'image/svg+xml', '.webmanifest': 'application/manifest+json', '.txt': 'text/plain' }
const server = https.createServer(
  { key: readFileSync(join(certDir, 'key.pem')), cert: readFileSync(join(certDir, 'cert.pem')) },
  (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, 'https://x').pathname)).replace(/^(\.\.[/\\])+/, '')
    let file = join(dir, path)
    if (!existsSync(file) || statSync(file).isDirectory()) {
      if (extname(path)) { res.writeHead(404); return res.end() }
      file = join(dir, 'index.html')
    }
    res.writeHead(200, {
      'content-type': types[extname(file)] ?? 'application/octet-stream',
      'cache-control': 'no-cache',
      // the same policy as the real host, so the client is tested under it
      'content-security-policy': "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; connect-src 'self' wss:; worker-src 'self'; manifest-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'",
    })
    res.end(readFileSync(file))
  },
)

const rooms = new Map() // room -> Map(id -> {ws, username})
const sessions = new Map() // ws -> {id, room, username}
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
const wss = new WebSocketServer({ server, path: '/ws' })
const err = (ws, errorType, errorText) => ws.send(JSON.stringify({ type: 'error', message: { errorType, errorText } }))
function leave(s) {
  const members = rooms.get(s.room)
  if (!members) return
  members.delete(s.id)
  for (const m of members.values()) m.ws.send(JSON.stringify({ type: 'logout', from: s.id, data: { username: s.username, sessionId: s.id } }))
  if (members.size === 0) rooms.delete(s.room)
  s.room = null
}
wss.on('connection', (ws) => {
  const s = { id: randomUUID(), room: null, username: null }
  sessions.set(ws, s)
  ws.on('message', (raw, isBinary) => {
    if (isBinary) return err(ws, 'badRequest', 'binary frames are refused')
    let m
    try { m = JSON.parse(raw.toString()) } catch { return err(ws, 'badRequest', 'not JSON') }
    if (!m || typeof m !== 'object' || typeof m.type !== 'string') return err(ws, 'badRequest', 'no type')
    m.from = s.id
    if (s.username) m.username = s.username
    switch (m.type) {
      case 'login': {
        const room = String(m.data?.roomrequest ?? '').trim()
        const username = String(m.data?.username ?? '').trim()
        if (!room || !username) return err(ws, 'badRequest', 'missing fields')
        const members = rooms.get(room) ?? new Map()
        if (members.size >= roomMax) return err(ws, 'full', 'the room is full')
        if (s.room) leave(s)
        s.username = username
        m.username = username
        for (const x of members.values()) x.ws.send(JSON.stringify(m))
        members.set(s.id, { ws, username })
        rooms.set(room, members)
        s.room = room
        ws.send(JSON.stringify({
          type: 'joined', data: s.id, room,
          members: [...members].map(([sessionId, x]) => ({ sessionId, username: x.username })),
          iceServers: [],
        }))
        return
      }
      case 'randomCheck':
        if (typeof m.data !== 'string' || !UUID.test(m.data)) return err(ws, 'badRequest', 'not a uuid')
        return ws.send(JSON.stringify({ type: 'randomCheckResult', data: { result: rooms.has(m.data) ? 'fail' : 'ok', roomrequest: m.data } }))
      case 'offer': case 'answer': case 'candidate': {
        if (!s.room) return err(ws, 'notInRoom', 'login first')
        const members = rooms.get(s.room)
        const targets = m.to ? [members.get(m.to)].filter(Boolean) : [...members].filter(([id]) => id !== s.id).map(([, x]) => x)
        for (const x of targets) x.ws.send(JSON.stringify(m))
        return
      }
      default:
        return err(ws, 'badRequest', `unknown type ${m.type}`)
    }
  })
  ws.on('close', () => {
    if (s.room) leave(s)
    sessions.delete(ws)
  })
})
server.listen(port, '127.0.0.1', () => console.log(`mock host ready at https://localhost:${server.address().port}/`))
