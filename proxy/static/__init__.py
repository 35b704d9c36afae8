"""The status page's files (HTML, CSS, JS), served by the admin listener at `/`. Package data only."""
