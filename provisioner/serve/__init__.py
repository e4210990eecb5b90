"""Running servers: the boot services (TFTP + in-process HTTP), the gunicorn pool, bind parsing."""
