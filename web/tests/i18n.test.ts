import { describe, it, expect } from 'vitest'
import { detectLocale, translate, errorKey } from '../src/i18n'

describe('i18n', () => {
  it('picks Korean or English from the browser, remembers a choice', () => {
    expect(detectLocale(['ko-KR', 'en-US'], null)).toBe('ko')
    expect(detectLocale(['en-GB', 'ko'], null)).toBe('en')
    expect(detectLocale(['fr-FR', 'ko'], null)).toBe('ko')
    expect(detectLocale(['fr-FR'], null)).toBe('en')
    expect(detectLocale(['ko-KR'], 'en')).toBe('en')
  })

  it('fills parameters in both languages', () => {
    expect(translate('en', 'joined', { name: 'Mike' })).toBe('Mike joined')
    expect(translate('ko', 'joined', { name: 'Mike' })).toBe('Mike님이 로그인하였습니다')
    expect(translate('ko', 'left', { name: 'Mike' })).toBe('Mike님이 로그아웃하였습니다')
  })

  it('names every protocol error in words', () => {
    for (const type of ['full', 'badRequest', 'notInRoom', 'rateLimited', 'forbidden', 'internal']) {
      const k = errorKey(type)
      expect(k).toBe(`err_${type}`)
      expect(translate('en', k).length).toBeGreaterThan(5)
      expect(translate('ko', k)).not.toBe(translate('en', k))
    }
    expect(errorKey('somethingElse')).toBe('err_unknown')
    expect(translate('en', 'err_full')).toMatch(/room is full/i)
    expect(translate('ko', 'err_full')).toMatch(/가득/)
  })
})
