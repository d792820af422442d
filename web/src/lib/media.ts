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

export async function acquireLocalMedia(
  md: Pick<MediaDevices, 'getUserMedia'> | undefined = globalThis.navigator?.mediaDevices,
  makeStream: () => MediaStream = () => new MediaStream(),
): Promise<LocalMedia> {
  if (!md || typeof md.getUserMedia !== 'function') {
    return { stream: makeStream(), hasVideo: false, hasAudio: false, issue: 'unsupported' }
  }
  let firstIssue: MediaIssue = 'none'
  const attempts: [MediaStreamConstraints, MediaIssue][] = [
    [{ video: VIDEO_CONSTRAINTS, audio: true }, 'none'],
    [{ video: false, audio: true }, 'audioOnly'],
    [{ video: VIDEO_CONSTRAINTS, audio: false }, 'videoOnly'],
  ]
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
