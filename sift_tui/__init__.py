"""sift-tui: the Textual console for sift daemons. It talks to them only through
:mod:`sift.control.client`; the headless ``sift`` package never imports this one."""
