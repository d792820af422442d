// Desktop tile layout: how many columns, and how wide each tile, so that the
// remote tiles fill the space they have (as Galène, Jitsi or LiveKit Meet do)
// instead of sitting small in a large empty panel.

export interface GridLayout {
  cols: number
  /** tile width in CSS pixels (the tile keeps its aspect ratio) */
  width: number
}

export interface SpotlightLayout {
  /** the pinned tile's width */
  pinned: number
  /** the others: one row under it */
  others: GridLayout
}

/**
 * The column count that makes `n` tiles of aspect `aspect` (width / height)
 * largest inside `w` × `h` with `gap` between them; ties go to fewer columns.
 */
export function gridLayout(w: number, h: number, n: number, gap: number, aspect: number): GridLayout {
  if (n <= 0 || w <= 0 || h <= 0) return { cols: 1, width: 0 }
  let best: GridLayout = { cols: 1, width: 0 }
  for (let cols = 1; cols <= n; cols++) {
    const rows = Math.ceil(n / cols)
    const byWidth = (w - (cols - 1) * gap) / cols
    const byHeight = ((h - (rows - 1) * gap) / rows) * aspect
    const width = Math.floor(Math.max(0, Math.min(byWidth, byHeight)))
    if (width > best.width) best = { cols, width }
  }
  return best
}

/**
 * A pinned tile over one row of the others: the row takes at most a quarter
 * of the height, the pinned tile the rest (a shared screen pinned is wider:
 * `pinnedAspect`).
 */
export function spotlightLayout(w: number, h: number, n: number, gap: number, aspect: number, pinnedAspect = aspect): SpotlightLayout {
  const rest = n - 1
  if (rest <= 0) return { pinned: gridLayout(w, h, 1, gap, pinnedAspect).width, others: { cols: 1, width: 0 } }
  const rowH = Math.max(0, (h - gap) / 4)
  const width = Math.floor(Math.max(0, Math.min((w - (rest - 1) * gap) / rest, rowH * aspect)))
  const pinnedH = h - gap - width / aspect
  return { pinned: Math.floor(Math.max(0, Math.min(w, pinnedH * pinnedAspect))), others: { cols: rest, width } }
}
