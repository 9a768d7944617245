/** Entry of the operator dashboard (`dashboard.html`, served at `/dashboard`): defines its elements. */
import './sh-dashboard.ts';
