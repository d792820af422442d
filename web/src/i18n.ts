// Korean + English. The browser language picks; the toggle switches and is remembered.
import { ref, computed } from 'vue'

export type Locale = 'ko' | 'en'

const en = {
  appTitle: 'WebRTC Chat',
  shortTitle: 'WebRTC',
  roomLabel: 'Room',
  roomPlaceholder: 'Room number',
  nameLabel: 'Your name',
  namePlaceholder: 'User name',
  randomRoom: 'Make a random room',
  login: 'Login',
  joining: 'Joining…',
  connectingServer: 'Connecting to the server…',
  serverOffline: 'The server cannot be reached. Retrying…',
  askingCamera: 'Asking for camera and microphone…',
  checkingRoom: 'Checking that the room is free…',
  roomFree: 'This room is free — it is yours.',
  roomTaken: 'That room is in use; drawing another…',
  fieldEmptyRoom: 'Enter a room number, or make a random one.',
  fieldEmptyName: 'Enter your name.',
  fieldLong: 'That is too long.',
  fieldChars: 'That contains characters that are not allowed.',
  tryAgain: 'You can try again.',
  err_full: 'The room is full. Try another room.',
  err_badRequest: 'The server did not accept the request.',
  err_notInRoom: 'You are not in a room any more.',
  err_rateLimited: 'Too many messages at once. Wait a moment and try again.',
  err_forbidden: 'This server does not allow that.',
  err_internal: 'The server had a problem. Try again.',
  err_unknown: 'The server reported an error.',
  err_timeout: 'The server did not answer. Check the connection and try again.',
  err_passwordRequired: 'This room has a password. Enter it and log in again.',
  err_wrongPassword: 'That password is wrong for this room.',
  err_kicked: '{name} removed you from the room.',
  err_kickedAnon: 'The room owner removed you from the room.',
  err_closed: 'The server ended your session and asked not to reconnect.',
  passwordLabel: 'Room password (optional)',
  passwordPlaceholder: 'Room password (optional)',
  passwordHint: 'The first person in a room sets its password; others must enter it.',
  remove: 'Remove',
  removeLabel: 'Remove {name} from the room',
  removeConfirm: 'Remove {name} from the room?',
  cancel: 'Cancel',
  youRemoved: 'You removed {name} from the room',
  chatInfo: 'Chat Info',
  roomId: 'Room ID',
  share: 'Share',
  linkCopied: 'Room link copied.',
  copyFailed: 'Could not copy — select the link and copy it.',
  messages: 'Messages and notices',
  chatInput: 'Chat message',
  chatPlaceholder: 'Type a message',
  send: 'Send',
  noPeersToChat: 'Nobody else is here yet — messages are sent once someone joins.',
  joined: '{name} joined',
  left: '{name} left',
  youJoined: 'You joined room {room}',
  reconnecting: 'Connection to the server lost. Reconnecting…',
  reconnected: 'Reconnected to the room.',
  me: 'Me',
  you: '(you)',
  cameraOn: 'Turn camera off',
  cameraOff: 'Turn camera on',
  micOn: 'Mute microphone',
  micOff: 'Unmute microphone',
  camera: 'Camera',
  microphone: 'Microphone',
  shareScreen: 'Share screen',
  stopShare: 'Stop sharing',
  leave: 'Leave',
  openChat: 'Open chat',
  openVideo: 'Back to video',
  language: '한국어',
  languageLabel: '한국어로 보기 (switch to Korean)',
  media_denied: 'Camera and microphone were not allowed. You can still watch and chat (receive-only).',
  media_notFound: 'No camera or microphone found. You can still watch and chat (receive-only).',
  media_unsupported: 'This browser cannot use a camera here. You can still watch and chat (receive-only).',
  media_error: 'The camera could not be started. You can still watch and chat (receive-only).',
  media_audioOnly: 'No camera: others hear you but cannot see you.',
  media_videoOnly: 'No microphone: others see you but cannot hear you.',
  state_new: 'Waiting…',
  state_connecting: 'Connecting…',
  state_connected: 'Connected',
  state_reconnecting: 'Reconnecting…',
  state_failed: 'Connection failed',
  state_closed: 'Left',
  noVideo: 'No video',
  waitingOthers: 'Waiting for others to join. Share the room link to invite them.',
  tapToUnmute: 'Tap to hear',
  participants: '{n} in the room',
  dismiss: 'Dismiss',
  relayMode: 'Relay only',
  newMessages: '{n} new',
  prejoinOpen: 'Check camera and microphone',
  prejoinClose: 'Close the preview',
  prejoinTitle: 'Before you join',
  speaker: 'Speaker',
  defaultDevice: 'Default',
  micLevel: 'Microphone level',
  deviceFailed: 'That device could not be started.',
  previewLabel: 'Your camera',
  audioOnly: 'Audio only (send no video)',
  messageToast: '{name}: {text}',
  pinLabel: 'Pin {name} (spotlight)',
  fullscreenLabel: 'Show {name} full screen',
  quality_good: 'Connection: good',
  quality_fair: 'Connection: fair',
  quality_poor: 'Connection: poor',
  qualityDetail: 'round trip {rtt} ms, loss {loss} %, jitter {jitter} ms',
  retry: 'Retry',
  retryLabel: 'Retry the connection to {name}',
  switchCamera: 'Switch camera (front/back)',
  screenBadge: 'Screen',
} as const

export type MessageKey = keyof typeof en

const ko: Record<MessageKey, string> = {
  appTitle: 'WebRTC Chat',
  shortTitle: 'WebRTC',
  roomLabel: '방 번호',
  roomPlaceholder: '방 번호',
  nameLabel: '사용자 이름',
  namePlaceholder: '사용자 이름',
  randomRoom: '무작위 방 만들기',
  login: '로그인',
  joining: '입장하는 중…',
  connectingServer: '서버에 연결하는 중…',
  serverOffline: '서버에 연결할 수 없습니다. 다시 시도하는 중…',
  askingCamera: '카메라와 마이크 권한을 요청하는 중…',
  checkingRoom: '빈 방인지 확인하는 중…',
  roomFree: '비어 있는 방입니다. 사용할 수 있습니다.',
  roomTaken: '사용 중인 방입니다. 다른 번호를 만드는 중…',
  fieldEmptyRoom: '방 번호를 입력하거나 무작위 방을 만드세요.',
  fieldEmptyName: '이름을 입력하세요.',
  fieldLong: '너무 깁니다.',
  fieldChars: '사용할 수 없는 문자가 들어 있습니다.',
  tryAgain: '다시 시도할 수 있습니다.',
  err_full: '방이 가득 찼습니다. 다른 방을 선택하세요.',
  err_badRequest: '서버가 요청을 받아들이지 않았습니다.',
  err_notInRoom: '방에 참여하지 않은 상태입니다.',
  err_rateLimited: '요청이 너무 많습니다. 잠시 후 다시 시도하세요.',
  err_forbidden: '이 서버에서 허용되지 않는 요청입니다.',
  err_internal: '서버에 문제가 생겼습니다. 다시 시도하세요.',
  err_unknown: '서버에서 오류를 알렸습니다.',
  err_timeout: '서버가 응답하지 않습니다. 연결을 확인하고 다시 시도하세요.',
  err_passwordRequired: '비밀번호가 있는 방입니다. 비밀번호를 입력하고 다시 로그인하세요.',
  err_wrongPassword: '이 방의 비밀번호가 아닙니다.',
  err_kicked: '{name}님이 회원님을 방에서 내보냈습니다.',
  err_kickedAnon: '방장이 회원님을 방에서 내보냈습니다.',
  err_closed: '서버가 연결을 종료했고 다시 연결하지 말라고 알렸습니다.',
  passwordLabel: '방 비밀번호 (선택)',
  passwordPlaceholder: '방 비밀번호 (선택)',
  passwordHint: '방에 처음 들어온 사람이 비밀번호를 정하고, 다른 사람은 그 비밀번호를 입력해야 합니다.',
  remove: '내보내기',
  removeLabel: '{name}님을 방에서 내보내기',
  removeConfirm: '{name}님을 방에서 내보낼까요?',
  cancel: '취소',
  youRemoved: '{name}님을 방에서 내보냈습니다',
  chatInfo: 'Chat Info',
  roomId: '방 ID',
  share: '공유',
  linkCopied: '방 링크를 복사했습니다.',
  copyFailed: '복사하지 못했습니다. 링크를 선택해 복사하세요.',
  messages: '메시지와 알림',
  chatInput: '채팅 메시지',
  chatPlaceholder: '채팅 입력',
  send: '보내기',
  noPeersToChat: '아직 아무도 없습니다. 누군가 들어오면 메시지를 보낼 수 있습니다.',
  joined: '{name}님이 로그인하였습니다',
  left: '{name}님이 로그아웃하였습니다',
  youJoined: '{room} 방에 입장했습니다',
  reconnecting: '서버 연결이 끊겼습니다. 다시 연결하는 중…',
  reconnected: '방에 다시 연결되었습니다.',
  me: '나',
  you: '(나)',
  cameraOn: '카메라 끄기',
  cameraOff: '카메라 켜기',
  micOn: '마이크 끄기',
  micOff: '마이크 켜기',
  camera: '카메라',
  microphone: '마이크',
  shareScreen: '화면 공유',
  stopShare: '화면 공유 중지',
  leave: '나가기',
  openChat: '채팅 열기',
  openVideo: '영상으로 돌아가기',
  language: 'English',
  languageLabel: 'EN (영어로 보기)',
  media_denied: '카메라와 마이크가 허용되지 않았습니다. 보기와 채팅은 할 수 있습니다 (수신 전용).',
  media_notFound: '카메라나 마이크가 없습니다. 보기와 채팅은 할 수 있습니다 (수신 전용).',
  media_unsupported: '이 브라우저에서는 카메라를 쓸 수 없습니다. 보기와 채팅은 할 수 있습니다 (수신 전용).',
  media_error: '카메라를 시작하지 못했습니다. 보기와 채팅은 할 수 있습니다 (수신 전용).',
  media_audioOnly: '카메라가 없습니다. 다른 사람은 소리만 들을 수 있습니다.',
  media_videoOnly: '마이크가 없습니다. 다른 사람은 영상만 볼 수 있습니다.',
  state_new: '기다리는 중…',
  state_connecting: '연결하는 중…',
  state_connected: '연결됨',
  state_reconnecting: '다시 연결하는 중…',
  state_failed: '연결 실패',
  state_closed: '나감',
  noVideo: '영상 없음',
  waitingOthers: '다른 사람을 기다리는 중입니다. 방 링크를 공유해 초대하세요.',
  tapToUnmute: '눌러서 소리 듣기',
  participants: '{n}명 참여 중',
  dismiss: '닫기',
  relayMode: '릴레이 전용',
  newMessages: '새 메시지 {n}',
  prejoinOpen: '카메라와 마이크 확인',
  prejoinClose: '미리보기 닫기',
  prejoinTitle: '입장하기 전에',
  speaker: '스피커',
  defaultDevice: '기본 장치',
  micLevel: '마이크 음량',
  deviceFailed: '그 장치를 시작하지 못했습니다.',
  previewLabel: '내 카메라',
  audioOnly: '음성만 (영상 보내지 않기)',
  messageToast: '{name}: {text}',
  pinLabel: '{name} 고정 (크게 보기)',
  fullscreenLabel: '{name} 전체 화면',
  quality_good: '연결 상태: 좋음',
  quality_fair: '연결 상태: 보통',
  quality_poor: '연결 상태: 나쁨',
  qualityDetail: '왕복 {rtt} ms, 손실 {loss} %, 지터 {jitter} ms',
  retry: '다시 시도',
  retryLabel: '{name} 다시 연결하기',
  switchCamera: '카메라 전환 (전면/후면)',
  screenBadge: '화면',
}

const tables: Record<Locale, Record<MessageKey, string>> = { en, ko }
const STORAGE_KEY = 'webrtc-chat.locale'

export function detectLocale(
  langs: readonly string[] = globalThis.navigator?.languages ?? [globalThis.navigator?.language ?? 'en'],
  stored: string | null = safeGet(),
): Locale {
  if (stored === 'ko' || stored === 'en') return stored
  for (const l of langs) {
    const p = l.toLowerCase()
    if (p.startsWith('ko')) return 'ko'
    if (p.startsWith('en')) return 'en'
  }
  return 'en'
}

function safeGet(): string | null {
  try {
    return globalThis.localStorage?.getItem(STORAGE_KEY) ?? null
  } catch {
    return null
  }
}

export const locale = ref<Locale>(detectLocale())

export function setLocale(l: Locale) {
  locale.value = l
  try {
    globalThis.localStorage?.setItem(STORAGE_KEY, l)
  } catch {
    /* private mode */
  }
  if (typeof document !== 'undefined') document.documentElement.lang = l
}

export function toggleLocale() {
  setLocale(locale.value === 'ko' ? 'en' : 'ko')
}

export function translate(l: Locale, key: MessageKey, params?: Record<string, string | number>): string {
  let s = tables[l][key] ?? en[key] ?? key
  if (params) for (const [k, v] of Object.entries(params)) s = s.split(`{${k}}`).join(String(v))
  return s
}

export function t(key: MessageKey, params?: Record<string, string | number>): string {
  return translate(locale.value, key, params)
}

export function errorKey(errorType: string): MessageKey {
  const k = `err_${errorType}` as MessageKey
  return k in en ? k : 'err_unknown'
}

export const isKorean = computed(() => locale.value === 'ko')
