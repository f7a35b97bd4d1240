from swarm_pool.cli import main

main()
