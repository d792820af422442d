// Connection quality of one peer connection, read from getStats: round-trip
// time, packet loss and jitter, rated good / fair / poor for the tile badge.

export type Quality = 'good' | 'fair' | 'poor'

export interface LinkStats {
  /** seconds, of the selected candidate pair (null: not known yet) */
  rtt: number | null
  /** fraction of inbound packets lost since the previous sample (0..1) */
  loss: number | null
  /** seconds, the worst inbound stream's */
  jitter: number | null
}

/** Inbound packets lost and received so far, per inbound stream, kept between two samples (loss is over the interval). */
export type LossCounters = Record<string, { lost: number; received: number }>

/** Thresholds as video-call apps commonly use them (ITU-T G.114: ≤150 ms one way is good). */
export function rateQuality(s: LinkStats): Quality | null {
  if (s.rtt === null && s.loss === null && s.jitter === null) return null
  const rtt = s.rtt ?? 0
  const loss = s.loss ?? 0
  const jitter = s.jitter ?? 0
  if (rtt >= 0.5 || loss >= 0.08 || jitter >= 0.1) return 'poor'
  if (rtt >= 0.25 || loss >= 0.02 || jitter >= 0.03) return 'fair'
  return 'good'
}

type Stat = Record<string, unknown> & { type: string; id: string }

/**
 * One sample from a getStats() report. `prev` is the counters of the last
 * sample of this connection; the new counters come back for the next one.
 */
export function readLinkStats(report: RTCStatsReport, prev: LossCounters | null): { stats: LinkStats; counters: LossCounters } {
  const all: Stat[] = []
  report.forEach((r: Stat) => all.push(r))
  const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : null)

  // the selected pair: the transport names it; else the nominated, succeeded one
  let pairId: string | null = null
  for (const r of all) if (r.type === 'transport' && typeof r.selectedCandidatePairId === 'string') pairId = r.selectedCandidatePairId
  const pair = all.find((r) => r.type === 'candidate-pair' && (pairId ? r.id === pairId : r.nominated === true && r.state === 'succeeded'))
  let rtt = num(pair?.currentRoundTripTime)
  if (rtt === null) {
    // what the peer measured on our outgoing streams (RTCP)
    for (const r of all) {
      const v = r.type === 'remote-inbound-rtp' ? num(r.roundTripTime) : null
      if (v !== null) rtt = Math.max(rtt ?? 0, v)
    }
  }

  const counters: LossCounters = {}
  let dl = 0
  let dr = 0
  let jitter: number | null = null
  for (const r of all) {
    if (r.type !== 'inbound-rtp') continue
    const now = { lost: Math.max(0, num(r.packetsLost) ?? 0), received: num(r.packetsReceived) ?? 0 }
    counters[r.id] = now
    const before = prev?.[r.id]
    if (before) {
      dl += Math.max(0, now.lost - before.lost)
      dr += Math.max(0, now.received - before.received)
    }
    const j = num(r.jitter)
    if (j !== null) jitter = Math.max(jitter ?? 0, j)
  }
  const loss = prev && Object.keys(counters).some((id) => id in prev) ? (dl + dr > 0 ? dl / (dl + dr) : 0) : null
  return { stats: { rtt, loss, jitter }, counters }
}
