from jstorrent_cli.cli import main

main()
