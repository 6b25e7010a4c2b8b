from nodeagent.testing.apiserver.cli import main

main()
