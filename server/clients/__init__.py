"""Programs that call a bnserve server (`bnserve predict`, the image's HEALTHCHECK) and the
channel they open; nothing here serves."""
