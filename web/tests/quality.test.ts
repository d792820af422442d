import { describe, it, expect } from 'vitest'
import { rateQuality, readLinkStats } from '../src/lib/quality'

const report = (rows: Record<string, unknown>[]) => {
  const m = new Map(rows.map((r) => [r.id as string, r]))
  return m as unknown as RTCStatsReport
}

describe('connection quality', () => {
  it('rates round trip, loss and jitter', () => {
    expect(rateQuality({ rtt: 0.02, loss: 0, jitter: 0.004 })).toBe('good')
    expect(rateQuality({ rtt: 0.3, loss: 0, jitter: 0.004 })).toBe('fair')
    expect(rateQuality({ rtt: 0.02, loss: 0.03, jitter: 0.004 })).toBe('fair')
    expect(rateQuality({ rtt: 0.02, loss: 0, jitter: 0.05 })).toBe('fair')
    expect(rateQuality({ rtt: 0.6, loss: 0, jitter: 0 })).toBe('poor')
    expect(rateQuality({ rtt: 0.02, loss: 0.1, jitter: 0 })).toBe('poor')
    expect(rateQuality({ rtt: 0.02, loss: 0, jitter: 0.2 })).toBe('poor')
    expect(rateQuality({ rtt: null, loss: null, jitter: null })).toBeNull()
  })

  it('reads the selected pair and the loss between two samples', () => {
    const first = readLinkStats(
      report([
        { id: 'T', type: 'transport', selectedCandidatePairId: 'P2' },
        { id: 'P1', type: 'candidate-pair', currentRoundTripTime: 0.9, nominated: true, state: 'succeeded' },
        { id: 'P2', type: 'candidate-pair', currentRoundTripTime: 0.04 },
        { id: 'A', type: 'inbound-rtp', kind: 'audio', packetsLost: 2, packetsReceived: 100, jitter: 0.003 },
        { id: 'V', type: 'inbound-rtp', kind: 'video', packetsLost: 0, packetsReceived: 300, jitter: 0.012 },
      ]),
      null,
    )
    expect(first.stats).toEqual({ rtt: 0.04, loss: null, jitter: 0.012 })
    expect(first.counters).toEqual({ A: { lost: 2, received: 100 }, V: { lost: 0, received: 300 } })
    const second = readLinkStats(
      report([
        { id: 'P', type: 'candidate-pair', currentRoundTripTime: 0.05, nominated: true, state: 'succeeded' },
        { id: 'A', type: 'inbound-rtp', kind: 'audio', packetsLost: 12, packetsReceived: 190, jitter: 0.003 },
      ]),
      first.counters,
    )
    // audio: 10 more lost, 90 more received; the video stream that went away counts for nothing
    expect(second.stats.rtt).toBe(0.05)
    expect(second.stats.loss).toBeCloseTo(0.1, 5)
    expect(second.stats.jitter).toBe(0.003)
    // nothing received yet: no rating
    const none = readLinkStats(report([{ id: 'T', type: 'transport' }]), null)
    expect(rateQuality(none.stats)).toBeNull()
  })
})
