/**
 * A view's reload timer: `after(ms)` bumps `tick` once that long has passed, which the view's
 * `@lit/task` reads among its args, so the task runs again. Nothing fires while the view is out of
 * the page (its timer is cleared when the host leaves it; the host picks up again, if it wants,
 * when it comes back).
 */
import type { ReactiveController, ReactiveControllerHost } from 'lit';

export class Poll implements ReactiveController {
  /** Bumped by each firing: a task arg. */
  tick = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly host: ReactiveControllerHost & HTMLElement) {
    host.addController(this);
  }

  /** Reloads once after `ms` (a call meanwhile replaces the one before). */
  after(ms: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.host.isConnected) return;
      this.tick++;
      this.host.requestUpdate();
    }, ms);
  }

  hostDisconnected(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}
