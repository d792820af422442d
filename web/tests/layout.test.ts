import { describe, it, expect } from 'vitest'
import { gridLayout, spotlightLayout } from '../src/lib/layout'

describe('desktop tile layout', () => {
  it('picks the column count that makes the tiles largest', () => {
    // a tall panel: two tiles one above the other
    expect(gridLayout(600, 800, 2, 16, 4 / 3)).toEqual({ cols: 1, width: 522 })
    // a wide panel: side by side
    expect(gridLayout(1200, 500, 2, 16, 4 / 3)).toEqual({ cols: 2, width: 592 })
    // one tile fills the smaller side
    expect(gridLayout(800, 450, 1, 16, 4 / 3)).toEqual({ cols: 1, width: 600 })
    // nine in a square-ish panel: 3 × 3
    expect(gridLayout(900, 700, 9, 16, 4 / 3).cols).toBe(3)
  })

  it('never overflows the panel', () => {
    for (const [w, h] of [[640, 720], [1200, 500], [300, 900], [900, 300]]) {
      for (let n = 1; n <= 9; n++) {
        const g = gridLayout(w, h, n, 16, 4 / 3)
        const rows = Math.ceil(n / g.cols)
        expect(g.cols * g.width + (g.cols - 1) * 16).toBeLessThanOrEqual(w)
        expect(rows * (g.width * 3) / 4 + (rows - 1) * 16).toBeLessThanOrEqual(h + 0.01)
        expect(g.width).toBeGreaterThan(0)
      }
    }
  })

  it('a pinned tile takes the panel over one row of the others', () => {
    const s = spotlightLayout(600, 720, 3, 16, 4 / 3)
    expect(s.others.cols).toBe(2)
    expect(s.pinned).toBeGreaterThan(s.others.width * 2)
    // pinned + gap + the row fit in the height
    expect((s.pinned * 3) / 4 + 16 + (s.others.width * 3) / 4).toBeLessThanOrEqual(720 + 0.01)
    expect(s.pinned).toBeLessThanOrEqual(600)
    expect(spotlightLayout(600, 720, 1, 16, 4 / 3).pinned).toBe(gridLayout(600, 720, 1, 16, 4 / 3).width)
    // a pinned screen (16:9) is wider than a camera tile in the same room
    const screen = spotlightLayout(900, 720, 3, 16, 4 / 3, 16 / 9)
    expect(screen.pinned).toBeGreaterThan(spotlightLayout(900, 720, 3, 16, 4 / 3).pinned)
    expect((screen.pinned * 9) / 16 + 16 + (screen.others.width * 3) / 4).toBeLessThanOrEqual(720 + 0.01)
    expect(screen.pinned).toBeLessThanOrEqual(900)
  })

  it('nothing to lay out', () => {
    expect(gridLayout(0, 500, 3, 16, 4 / 3).width).toBe(0)
    expect(gridLayout(500, 500, 0, 16, 4 / 3).width).toBe(0)
  })
})
