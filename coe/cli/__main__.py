from coe.cli import main

if __name__ == "__main__":  # a spawned process (the service's composing process) imports this module too
    main()
