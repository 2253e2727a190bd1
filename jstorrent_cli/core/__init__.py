"""Sans-IO core: never imports trio, socket, os, pathlib or time. Time is a float argument."""
