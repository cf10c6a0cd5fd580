"""Serving a trained workdir: predictions for any LaMP questions file (more to come: the
Personalizer API, online user updates, export)."""
