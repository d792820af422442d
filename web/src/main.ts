import { createApp } from 'vue'
import { createPinia, setActivePinia } from 'pinia'
import App from './App.vue'
import { CallController } from './call'
import { useSession } from './stores/session'
import './style.css'

const pinia = createPinia()
const params = new URLSearchParams(location.search)

// the controller holds the stores, so pinia is active before it is made
setActivePinia(pinia)

const call = new CallController({ log: params.has('debug') ? console.log.bind(console) : undefined })
const session = useSession(pinia)
// a client-side choice for testing TURN: ?relay=1 forces iceTransportPolicy "relay"
session.relayOnly = params.get('relay') === '1' || params.get('relay') === 'true'
// ?room=ID, or the original client's share links: ?roomrequest=ID
const room = params.get('room') ?? params.get('roomrequest')
if (room) session.setRoom(room.slice(0, 128))

const app = createApp(App, { call })
app.use(pinia)
app.mount('#app')
call.start()
// back online: try the socket now instead of waiting for the next backoff step
window.addEventListener('online', () => {
  if (call.signaling.status !== 'open' && call.signaling.status !== 'connecting') call.signaling.connect()
})

// diagnostics for tests and curious users (read-only use)
;(window as unknown as { __webrtcChat?: CallController }).__webrtcChat = call

if ('serviceWorker' in navigator && import.meta.env.PROD) {
  import('virtual:pwa-register').then(({ registerSW }) => registerSW({ immediate: true })).catch(() => {})
}
