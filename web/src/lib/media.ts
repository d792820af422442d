// Local camera/microphone with modest constraints, falling back to less and
// finally to receive-only (an empty stream) with a reason the UI can show.

export type MediaIssue = 'none' | 'denied' | 'notFound' | 'unsupported' | 'audioOnly' | 'videoOnly' | 'error'

export interface LocalMedia {
  stream: MediaStream
  hasVideo: boolean
  hasAudio: boolean
  issue: MediaIssue
}

export const VIDEO_CONSTRAINTS: MediaTrackConstraints = {
  width: { ideal: 320 },
  height: { ideal: 240 },
  frameRate: { ideal: 24, max: 30 },
}

function classify(err: unknown): MediaIssue {
  const name = (err as { name?: string })?.name ?? ''
  if (name === 'NotAllowedError' || name === 'SecurityError' || name === 'PermissionDeniedError') return 'denied'
  if (name === 'NotFoundError' || name === 'DevicesNotFoundError' || name === 'OverconstrainedError') return 'notFound'
  return 'error'
}

/** Devices picked on the pre-join screen ('' = the browser's default). */
export interface DevicePrefs {
  videoinput: string
  audioinput: string
  audiooutput: string
}

export async function acquireLocalMedia(
  md: Pick<MediaDevices, 'getUserMedia'> | undefined = globalThis.navigator?.mediaDevices,
  makeStream: () => MediaStream = () => new MediaStream(),
  prefs: Partial<DevicePrefs> = {},
): Promise<LocalMedia> {
  if (!md || typeof md.getUserMedia !== 'function') {
    return { stream: makeStream(), hasVideo: false, hasAudio: false, issue: 'unsupported' }
  }
  let firstIssue: MediaIssue = 'none'
  // The picked devices exactly first: as `ideal` alone Chromium weighs a
  // deviceId like the size and frame rate and may open another camera. A
  // device unplugged since then fails that attempt, and the next ones (the
  // pick only preferred) fall back to another.
  const video: MediaTrackConstraints = prefs.videoinput ? { ...VIDEO_CONSTRAINTS, deviceId: { ideal: prefs.videoinput } } : VIDEO_CONSTRAINTS
  const audio: MediaTrackConstraints | true = prefs.audioinput ? { deviceId: { ideal: prefs.audioinput } } : true
  const attempts: [MediaStreamConstraints, MediaIssue][] = [
    [{ video, audio }, 'none'],
    [{ video: false, audio }, 'audioOnly'],
    [{ video, audio: false }, 'videoOnly'],
  ]
  if (prefs.videoinput || prefs.audioinput) {
    const exactVideo = prefs.videoinput ? { ...VIDEO_CONSTRAINTS, deviceId: { exact: prefs.videoinput } } : VIDEO_CONSTRAINTS
    const exactAudio = prefs.audioinput ? { deviceId: { exact: prefs.audioinput } } : true
    attempts.unshift([{ video: exactVideo, audio: exactAudio }, 'none'])
  }
  for (const [constraints, issue] of attempts) {
    try {
      const stream = await md.getUserMedia(constraints)
      return {
        stream,
        hasVideo: stream.getVideoTracks().length > 0,
        hasAudio: stream.getAudioTracks().length > 0,
        issue,
      }
    } catch (err) {
      if (firstIssue === 'none') firstIssue = classify(err)
      // a refused permission will be refused again: do not ask three times
      if (classify(err) === 'denied') break
    }
  }
  return { stream: makeStream(), hasVideo: false, hasAudio: false, issue: firstIssue === 'none' ? 'error' : firstIssue }
}

export function stopStream(stream: MediaStream | null | undefined) {
  stream?.getTracks().forEach((t) => t.stop())
}

export function canShareScreen(): boolean {
  return typeof navigator !== 'undefined' && typeof navigator.mediaDevices?.getDisplayMedia === 'function'
}

/** One track from exactly the device picked (camera or microphone; '' = the default one). */
export async function openDevice(
  kind: 'videoinput' | 'audioinput',
  deviceId: string,
  md: Pick<MediaDevices, 'getUserMedia'> = navigator.mediaDevices,
): Promise<MediaStreamTrack> {
  const id = deviceId ? { deviceId: { exact: deviceId } } : {}
  const stream = await md.getUserMedia(kind === 'videoinput' ? { video: { ...VIDEO_CONSTRAINTS, ...id } } : { audio: deviceId ? id : true })
  const track = stream.getTracks()[0]
  if (!track) throw new Error('no track from ' + kind)
  return track
}

/** The camera after `currentId` in the list (wrapping round); null when there is no other. */
export function nextCameraId(cameras: Pick<MediaDeviceInfo, 'deviceId' | 'kind'>[], currentId: string): string | null {
  const ids = cameras.filter((d) => d.kind === 'videoinput' && d.deviceId).map((d) => d.deviceId)
  if (ids.length < 2) return null
  const i = ids.indexOf(currentId)
  return ids[(i + 1) % ids.length]
}

/**
 * The other camera of a phone: by facingMode when the camera says which way
 * it faces (front "user" ↔ back "environment"), else the next camera in the
 * list. `current` is the running camera's settings (read before it is
 * stopped). Rejects when there is no other camera.
 */
export async function openOtherCamera(current: MediaTrackSettings, md: MediaDevices = navigator.mediaDevices): Promise<MediaStreamTrack> {
  const facing = current.facingMode
  if (facing === 'user' || facing === 'environment') {
    const other = facing === 'user' ? 'environment' : 'user'
    try {
      const s = await md.getUserMedia({ video: { ...VIDEO_CONSTRAINTS, facingMode: { exact: other } } })
      const track = s.getVideoTracks()[0]
      if (track) return track
    } catch (err) {
      // no camera facing the other way: fall back to the next one
      if ((err as { name?: string })?.name !== 'OverconstrainedError') throw err
    }
  }
  const next = nextCameraId(await md.enumerateDevices(), current.deviceId ?? '')
  if (!next) throw new Error('no other camera')
  return openDevice('videoinput', next, md)
}
