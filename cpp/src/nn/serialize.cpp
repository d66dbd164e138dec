// model save/load: added after the checkpoint I/O lands
