from citysense.cli import main

main()
