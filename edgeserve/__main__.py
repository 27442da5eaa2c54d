from edgeserve.cli.main import main

main()
