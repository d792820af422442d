import { describe, it, expect, vi } from 'vitest'
import { acquireLocalMedia } from '../src/lib/media'
import { FakeStream, FakeTrack, fakeStreamFactory } from './fakes'

const err = (name: string) => Object.assign(new Error(name), { name })

describe('acquireLocalMedia', () => {
  it('asks for 320x240-ish video and audio first', async () => {
    const gum = vi.fn(async () => new FakeStream([new FakeTrack('audio'), new FakeTrack('video')]) as unknown as MediaStream)
    const m = await acquireLocalMedia({ getUserMedia: gum }, fakeStreamFactory)
    expect(m).toMatchObject({ hasVideo: true, hasAudio: true, issue: 'none' })
    const c = (gum.mock.calls[0] as unknown as [MediaStreamConstraints])[0]
    expect(c.audio).toBe(true)
    expect((c.video as MediaTrackConstraints).width).toEqual({ ideal: 320 })
    expect((c.video as MediaTrackConstraints).height).toEqual({ ideal: 240 })
  })

  it('opens exactly the devices picked before; one unplugged since falls back to another', async () => {
    const gum = vi.fn(async () => new FakeStream([new FakeTrack('audio'), new FakeTrack('video')]) as unknown as MediaStream)
    await acquireLocalMedia({ getUserMedia: gum }, fakeStreamFactory, { videoinput: 'cam2', audioinput: 'mic1' })
    const c = (gum.mock.calls[0] as unknown as [MediaStreamConstraints])[0]
    expect((c.video as MediaTrackConstraints).deviceId).toEqual({ exact: 'cam2' })
    expect((c.audio as MediaTrackConstraints).deviceId).toEqual({ exact: 'mic1' })

    const gone = vi.fn(async (c: MediaStreamConstraints) => {
      if (JSON.stringify(c).includes('exact')) throw err('OverconstrainedError')
      return new FakeStream([new FakeTrack('audio'), new FakeTrack('video')]) as unknown as MediaStream
    })
    const m = await acquireLocalMedia({ getUserMedia: gone }, fakeStreamFactory, { videoinput: 'cam2', audioinput: '' })
    expect(m).toMatchObject({ hasVideo: true, hasAudio: true, issue: 'none' })
    expect(gone).toHaveBeenCalledTimes(2)
    const second = (gone.mock.calls[1] as unknown as [MediaStreamConstraints])[0]
    expect((second.video as MediaTrackConstraints).deviceId).toEqual({ ideal: 'cam2' })
  })

  it('falls back to audio only when there is no camera', async () => {
    const gum = vi.fn(async (c: MediaStreamConstraints) => {
      if (c.video) throw err('NotFoundError')
      return new FakeStream([new FakeTrack('audio')]) as unknown as MediaStream
    })
    const m = await acquireLocalMedia({ getUserMedia: gum }, fakeStreamFactory)
    expect(m).toMatchObject({ hasVideo: false, hasAudio: true, issue: 'audioOnly' })
  })

  it('a refused permission is asked once, and the user joins receive-only', async () => {
    const gum = vi.fn(async () => {
      throw err('NotAllowedError')
    })
    const m = await acquireLocalMedia({ getUserMedia: gum }, fakeStreamFactory)
    expect(gum).toHaveBeenCalledTimes(1)
    expect(m).toMatchObject({ hasVideo: false, hasAudio: false, issue: 'denied' })
    expect(m.stream.getTracks()).toEqual([])
  })

  it('no devices at all, or no API', async () => {
    const gum = vi.fn(async () => {
      throw err('NotFoundError')
    })
    expect((await acquireLocalMedia({ getUserMedia: gum }, fakeStreamFactory)).issue).toBe('notFound')
    expect(gum).toHaveBeenCalledTimes(3)
    expect((await acquireLocalMedia(undefined, fakeStreamFactory)).issue).toBe('unsupported')
  })
})

describe('nextCameraId (the phone camera switch without facingMode)', () => {
  const cam = (deviceId: string, kind = 'videoinput') => ({ deviceId, kind }) as MediaDeviceInfo
  it('takes the next camera, wrapping round; none when there is no other', async () => {
    const { nextCameraId } = await import('../src/lib/media')
    const list = [cam('a'), cam('m', 'audioinput'), cam('b'), cam('c')]
    expect(nextCameraId(list, 'a')).toBe('b')
    expect(nextCameraId(list, 'c')).toBe('a')
    expect(nextCameraId(list, 'unknown')).toBe('a')
    expect(nextCameraId([cam('a'), cam('m', 'audioinput')], 'a')).toBeNull()
    expect(nextCameraId([cam(''), cam('x')], 'x')).toBeNull()
  })
})
