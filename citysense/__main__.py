from citysense.launch.cli import main

main()
