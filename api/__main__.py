"""`python -m api`: serve the API with settings from the environment."""

from api.server import main

main()
