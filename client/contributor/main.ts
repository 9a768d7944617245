/** Entry of the contributor page (`index.html`): defines its elements. */
import './sh-contributor-page.ts';
