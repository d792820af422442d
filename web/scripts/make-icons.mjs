// Draws the app icons as PNG files with no native dependencies (zlib only):
// a teal tile with the white person of the original app and a chat bubble.
// Run: npm run icons  (the PNGs are committed under public/icons/)
import { deflateSync } from 'node:zlib'
import { writeFileSync, mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const out = join(dirname(fileURLToPath(import.meta.url)), '..', 'public', 'icons')
mkdirSync(out, { recursive: true })

const crcTable = new Uint32Array(256).map((_, n) => {
  let c = n
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
  return c >>> 0
})
function crc32(buf) {
  let c = 0xffffffff
  for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}
function chunk(type, data) {
  const len = Buffer.alloc(4)
  len.writeUInt32BE(data.length)
  const td = Buffer.concat([Buffer.from(type, 'ascii'), data])
  const crc = Buffer.alloc(4)
  crc.writeUInt32BE(crc32(td))
  return Buffer.concat([len, td, crc])
}
function png(size, rgba) {
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(size, 0)
  ihdr.writeUInt32BE(size, 4)
  ihdr[8] = 8 // bit depth
  ihdr[9] = 6 // RGBA
  const raw = Buffer.alloc((size * 4 + 1) * size)
  for (let y = 0; y < size; y++) {
    raw[y * (size * 4 + 1)] = 0
    rgba.copy(raw, y * (size * 4 + 1) + 1, y * size * 4, (y + 1) * size * 4)
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw, { level: 9 })),
    chunk('IEND', Buffer.alloc(0)),
  ])
}

// signed distance helpers in unit coordinates (0..1)
const roundRect = (x, y, cx, cy, hw, hh, r) => {
  const qx = Math.abs(x - cx) - hw + r
  const qy = Math.abs(y - cy) - hh + r
  return Math.hypot(Math.max(qx, 0), Math.max(qy, 0)) + Math.min(Math.max(qx, qy), 0) - r
}
const circle = (x, y, cx, cy, r) => Math.hypot(x - cx, y - cy) - r
const ring = (x, y, cx, cy, r, w) => Math.abs(circle(x, y, cx, cy, r)) - w / 2
// shoulders: the upper half of a rounded "U" turned over, drawn as a stroke
function shoulders(x, y, cx, top, halfW, bottom, r, w) {
  // path: from (cx-halfW, bottom) up to (cx-halfW, top+r), arc to (cx-halfW+r, top), line to (cx+halfW-r, top), arc, down
  const lx = cx - halfW, rx = cx + halfW
  let d = Infinity
  const seg = (ax, ay, bx, by) => {
    const px = x - ax, py = y - ay, dx = bx - ax, dy = by - ay
    const t = Math.max(0, Math.min(1, (px * dx + py * dy) / (dx * dx + dy * dy)))
    return Math.hypot(px - t * dx, py - t * dy)
  }
  d = Math.min(d, seg(lx, bottom, lx, top + r), seg(rx, bottom, rx, top + r), seg(lx + r, top, rx - r, top))
  for (const [ccx, side] of [[lx + r, -1], [rx - r, 1]]) {
    const ccy = top + r
    const inQuad = (x - ccx) * side >= 0 && y <= ccy
    if (inQuad) d = Math.min(d, Math.abs(Math.hypot(x - ccx, y - ccy) - r))
  }
  return d - w / 2
}

const TEAL = [15, 118, 110]
const TEAL_DARK = [17, 94, 89]
const WHITE = [255, 255, 255]

function draw(size, { maskable }) {
  const buf = Buffer.alloc(size * size * 4)
  const ss = 3 // supersampling per axis
  // maskable: full-bleed background, content inside the 80% safe circle
  const scale = maskable ? 0.72 : 0.86
  for (let py = 0; py < size; py++) {
    for (let px = 0; px < size; px++) {
      let acc = [0, 0, 0, 0]
      for (let sy = 0; sy < ss; sy++) {
        for (let sx = 0; sx < ss; sx++) {
          const x = (px + (sx + 0.5) / ss) / size
          const y = (py + (sy + 0.5) / ss) / size
          let col = null
          let a = 0
          const bg = maskable ? -1 : roundRect(x, y, 0.5, 0.5, 0.46, 0.46, 0.2)
          if (bg <= 0) {
            // vertical gradient on the tile
            const g = y
            col = TEAL.map((c, i) => Math.round(c * (1 - g * 0.35) + TEAL_DARK[i] * g * 0.35))
            a = 255
            // content coordinates
            const u = (x - 0.5) / scale + 0.5
            const v = (y - 0.5) / scale + 0.5
            const head = ring(u, v, 0.5, 0.36, 0.13, 0.065)
            const body = shoulders(u, v, 0.5, 0.58, 0.24, 0.8, 0.12, 0.065)
            if (Math.min(head, body) <= 0) col = WHITE
          }
          if (col) {
            acc[0] += col[0]; acc[1] += col[1]; acc[2] += col[2]; acc[3] += a
          }
        }
      }
      const n = ss * ss
      const o = (py * size + px) * 4
      const alpha = acc[3] / n
      if (alpha > 0) {
        const cover = acc[3] / 255 // samples covered
        buf[o] = Math.round(acc[0] / cover)
        buf[o + 1] = Math.round(acc[1] / cover)
        buf[o + 2] = Math.round(acc[2] / cover)
        buf[o + 3] = Math.round(alpha)
      }
    }
  }
  return png(size, buf)
}

const files = [
  ['icon-192.png', 192, false],
  ['icon-512.png', 512, false],
  ['maskable-512.png', 512, true],
  ['apple-touch-icon.png', 180, true],
]
for (const [name, size, maskable] of files) {
  writeFileSync(join(out, name), draw(size, { maskable }))
  console.log('wrote', join('public/icons', name))
}
