/**
 * The contributor page's custom events: `Event` subclasses that bubble and cross shadow roots,
 * fired by the controls and handled by `<sh-contributor-page>`.
 */

/** The contributor pressed Start. */
export class StartRequestEvent extends Event {
  static readonly eventName = 'start-request';
  constructor() {
    super(StartRequestEvent.eventName, { bubbles: true, composed: true });
  }
}

/** The throttle slider moved: `fraction` of time the worker may compute (0.05..1). */
export class ThrottleChangeEvent extends Event {
  static readonly eventName = 'throttle-change';
  constructor(readonly fraction: number) {
    super(ThrottleChangeEvent.eventName, { bubbles: true, composed: true });
  }
}

/** The pause button was pressed: `paused` is the state asked for. */
export class PauseToggleEvent extends Event {
  static readonly eventName = 'pause-toggle';
  constructor(readonly paused: boolean) {
    super(PauseToggleEvent.eventName, { bubbles: true, composed: true });
  }
}

/** The "pause while hidden" setting changed. */
export class AutoPauseChangeEvent extends Event {
  static readonly eventName = 'auto-pause-change';
  constructor(readonly enabled: boolean) {
    super(AutoPauseChangeEvent.eventName, { bubbles: true, composed: true });
  }
}

declare global {
  interface HTMLElementEventMap {
    'start-request': StartRequestEvent;
    'throttle-change': ThrottleChangeEvent;
    'pause-toggle': PauseToggleEvent;
    'auto-pause-change': AutoPauseChangeEvent;
  }
}
