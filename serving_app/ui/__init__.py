"""The Gradio views of the playground mount (``serving_app.playground`` puts them in tabs)."""
